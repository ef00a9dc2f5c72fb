"""`python -m nes_mpi eval CKPT`: run a checkpoint's mean policy for N episodes, optionally into a video.

The environment, step limit, policy and observation normalisation are rebuilt
from what the checkpoint stored, and episodes run through the same `rollout()`
as training, so a policy scores here what it would score in an in-training
evaluation with the same episode seeds. Episode i is seeded from (--seed, i).

With --render the first K episodes are also drawn offscreen (render_mode
"rgb_array"; MuJoCo uses MUJOCO_GL, default "egl" here) and streamed into an
.mp4 (imageio-ffmpeg) or .gif (imageio/Pillow; a GIF is held in memory until
it is written, so keep GIF episodes short).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, load
from .config import ConfigError

VIDEO_SUFFIXES = (".mp4", ".gif")
# Episode-seed stream of this command (training uses 0, in-training evaluation 1).
EVAL_CLI_STREAM = 2
DEFAULT_FPS = 30


@dataclass
class EpisodeResult:
    index: int
    seed: int
    ret: float
    length: int
    error: str = ""


def run_eval(args) -> int:
    _check_args(args)
    video = Path(args.render) if args.render else None
    if video is not None:
        _offscreen_environment()
    try:
        state = load(args.checkpoint, legacy=True)
    except CheckpointError as e:
        raise ConfigError(str(e)) from None

    runner = PolicyRunner(state, args.checkpoint, render_mode="rgb_array" if video is not None else None,
                          env=args.env)
    recorder = None
    try:
        if video is not None:
            fps = args.fps or int(runner.env.metadata.get("render_fps") or 0) or DEFAULT_FPS
            recorder = _VideoRecorder(runner.env, video, fps, runner.env_id)
            recorder.check()
        results = _run_episodes(runner, recorder, args)
    finally:
        if recorder is not None:
            recorder.close()
        runner.close()

    _report(args, state, runner.env_id, results, recorder)
    return 1 if any(r.error for r in results) else 0


class PolicyRunner:
    """A checkpoint's mean policy, its env and its observation normalisation, as training had them.

    `episode(seed)` plays one episode through rollout(), the training code path, one member wide.
    A checkpoint is data: its own environment is used only when that is a registered gymnasium id;
    a 'module:...' entry point (code to import) must come from the caller as `env`.
    """

    def __init__(self, state, source="checkpoint", render_mode=None, env: str | None = None):
        from .envs import make_env
        from .policy import BatchPolicy, spec_for
        from .trained_policy import policy_from_state

        cfg = state.config
        self.env_id = env_id = env or cfg.get("env")
        if not env_id:
            raise ConfigError(f"{source} does not name its environment")
        if env is None and ":" in env_id:
            raise ConfigError(f"{source} names the environment {env_id!r}, code that nes_mpi imports only when you "
                              f"name it yourself: pass --env {env_id}")
        trained = policy_from_state(state, source)
        spec, params = trained.spec, trained.params
        self.obs_mean, self.obs_std, self.obs_clip = trained.obs_mean, trained.obs_std, trained.obs_clip

        self.handle = make_env(env_id, cfg.get("env_kwargs") or {}, int(cfg.get("max_episode_steps") or 0),
                               render_mode=render_mode)
        try:
            try:
                actual = spec_for(self.handle.outer, spec.kind, spec.hidden_sizes, spec.activation,
                                  spec.clip_actions)
            except ValueError as e:
                raise ConfigError(f"environment {env_id!r}: {e}") from None
            if actual != spec:
                raise ConfigError(f"the policy in {source} ({spec.obs_dim} -> {spec.act_dim}) does not fit "
                                  f"environment {env_id!r} as it is now ({actual.obs_dim} -> {actual.act_dim})")
        except ConfigError:
            self.close()
            raise
        self.env = self.handle.env
        if render_mode is not None:
            _follow_the_robot(self.env)
        self.max_steps = self.handle.max_steps
        self.policy = BatchPolicy(spec)
        self.params = params[None, :]

    def episode(self, seed: int, env=None) -> tuple[float, int, str]:
        """(return, steps, error message or "") of one episode; `env` stands in for the runner's env."""
        from .rollout import rollout

        res = rollout([env if env is not None else self.env], self.max_steps, self.policy, self.params, [[seed]],
                      self.obs_mean, self.obs_std, self.obs_clip, collect_obs=False)
        error = "; ".join(msg for _, msg in res.errors) if res.failed[0] else ""
        return float(res.returns[0]), int(res.steps[0]), error

    def close(self) -> None:
        try:
            self.handle.outer.close()
        except Exception:
            pass


def _follow_the_robot(env) -> None:
    """gymnasium's MuJoCo v5 envs render from a free camera that stays put, so a running robot
    leaves the frame; use the model's own tracking camera ("track") when it has one."""
    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    if renderer is None or getattr(renderer, "camera_id", None) != -1:
        return
    import mujoco

    track = mujoco.mj_name2id(renderer.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    if track != -1:
        renderer.camera_id = track


def _check_args(args) -> None:
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1 (got {args.episodes})")
    if args.fps < 0:
        raise ConfigError(f"--fps must be positive (got {args.fps})")
    if args.render:
        suffix = Path(args.render).suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise ConfigError(f"--render {args.render}: unknown video type {repr(suffix) if suffix else '(no suffix)'}; "
                              f"use a name ending in {' or '.join(VIDEO_SUFFIXES)}")
        if not 1 <= args.render_episodes <= args.episodes:
            raise ConfigError(f"--render-episodes must be between 1 and --episodes ({args.episodes}), "
                              f"got {args.render_episodes}")


def _offscreen_environment() -> None:
    """Renderer settings for a machine without a display; whatever the user set wins."""
    if not os.environ.get("MUJOCO_GL"):  # read when mujoco is imported: set before any env is made
        os.environ["MUJOCO_GL"] = "egl"
    # pygame (classic-control envs) draws to a plain Surface for rgb_array but still initialises
    # SDL's video and audio; the dummy drivers keep it off the desktop and quiet on a server.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def _run_episodes(runner: PolicyRunner, recorder, args) -> list[EpisodeResult]:
    from tqdm import tqdm

    from .rollout import episode_seed

    results = []
    show = not args.no_progress and sys.stderr.isatty()
    with tqdm(total=args.episodes, desc="eval", unit="ep", file=sys.stderr, disable=not show,
              dynamic_ncols=True, leave=False) as bar:
        for i in range(args.episodes):
            seed = episode_seed(args.seed, 0, i, 0, EVAL_CLI_STREAM)
            recording = recorder is not None and i < args.render_episodes
            ret, length, error = runner.episode(seed, recorder if recording else None)
            if recording:
                recorder.raise_if_failed()
            results.append(EpisodeResult(i, seed, ret, length, error))
            bar.set_postfix_str(f"return {ret:.1f}, {length} steps")
            bar.update(1)
            if recording and i == args.render_episodes - 1:
                recorder.close()
    return results


def _report(args, state, env_id: str, results: list[EpisodeResult], recorder) -> None:
    print(f"{env_id} | checkpoint {args.checkpoint} | generation {state.generation}, "
          f"{state.timesteps:,} timesteps | {len(results)} episode(s), seed {args.seed}")
    for r in results:
        note = f"  FAILED: {r.error}" if r.error else ""
        print(f"  episode {r.index:4d}  seed {r.seed:10d}  return {r.ret:10.2f}  length {r.length:6d}{note}")
    ok = [r for r in results if not r.error]
    for r in results:
        if r.error:
            print(f"nes_mpi: warning: episode {r.index} failed: {r.error}", file=sys.stderr)
    if ok:
        rets = np.array([r.ret for r in ok])
        lens = np.array([r.length for r in ok])
        print(f"return {rets.mean():.2f} ± {rets.std():.2f}  (min {rets.min():.2f}, max {rets.max():.2f}, "
              f"{len(ok)} episode(s))")
        print(f"length {lens.mean():.1f} ± {lens.std():.1f} steps  (min {lens.min()}, max {lens.max()})")
    else:
        print("return - (every episode failed)")
    if recorder is not None:
        h, w = recorder.frame_shape
        print(f"video {recorder.path}: {recorder.frames} frames, {w}x{h}, {recorder.fps} fps, "
              f"{args.render_episodes} episode(s)")


class _VideoRecorder:
    """Stands in for the env inside rollout(): forwards reset/step and streams a frame after each."""

    def __init__(self, env, path: Path, fps: int, env_id: str):
        self.env = env
        self.path = path
        self.fps = fps
        self.env_id = env_id
        self.mp4 = path.suffix.lower() == ".mp4"
        self.writer = None
        self.frames = 0
        self.frame_shape = (0, 0)
        self.error: BaseException | None = None

    def check(self) -> None:
        """Render one frame up front so a missing renderer is a clear one-line error, not failed episodes."""
        from gymnasium.error import DependencyNotInstalled

        try:
            self.env.reset(seed=0)
            frame = self.env.render()
        except DependencyNotInstalled as e:
            raise ConfigError(f"cannot render {self.env_id}: {str(e).strip()}") from None
        except Exception as e:
            raise ConfigError(f"cannot render {self.env_id} offscreen{self._gl_hint()}: "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        if frame is None or np.ndim(frame) != 3:
            raise ConfigError(f"{self.env_id} returned no RGB image from render() (got {type(frame).__name__})")
        h, w = np.shape(frame)[:2]
        if self.mp4:  # H.264 in yuv420p needs even sides
            h, w = h - h % 2, w - w % 2
        self.frame_shape = (h, w)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            import imageio.v2 as imageio

            if self.mp4:
                self.writer = imageio.get_writer(self.path, format="FFMPEG", mode="I", fps=self.fps,
                                                 macro_block_size=1, ffmpeg_log_level="error")
            else:
                # GIF frame times are whole centiseconds; Pillow takes milliseconds.
                self.writer = imageio.get_writer(self.path, mode="I", duration=1000.0 / self.fps, loop=0)
        except (OSError, ValueError, RuntimeError, ImportError) as e:
            raise ConfigError(f"cannot write {self.path}: {e}") from None

    def _gl_hint(self) -> str:
        if "mujoco" not in type(self.env.unwrapped).__module__:
            return ""
        return (f" with MUJOCO_GL={os.environ.get('MUJOCO_GL', '')} "
                "(needs the EGL/GL libraries, e.g. apt-get install libegl1 libgl1)")

    # --- the env interface rollout() uses ---
    def reset(self, **kw):
        out = self.env.reset(**kw)
        self._frame()
        return out

    def step(self, action):
        out = self.env.step(action)
        self._frame()
        return out

    def _frame(self) -> None:
        try:
            frame = np.asarray(self.env.render())
            h, w = self.frame_shape
            if frame.shape[0] < h or frame.shape[1] < w:
                raise ValueError(f"frame size changed from {w}x{h} to {frame.shape[1]}x{frame.shape[0]}")
            self.writer.append_data(np.ascontiguousarray(frame[:h, :w, :3]))
            self.frames += 1
        except BaseException as e:  # rollout() would count it as a failed episode: keep it to re-raise
            self.error = e
            raise

    def raise_if_failed(self) -> None:
        if self.error is not None:
            e = self.error
            self.close()
            raise ConfigError(f"writing {self.path} failed: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        if self.writer is not None:
            w, self.writer = self.writer, None
            w.close()
        if self.frames == 0 and self.path.exists():
            self.path.unlink()
