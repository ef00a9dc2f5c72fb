"""Under mpiexec: node rank 0 holds the queue's counter and sleeps (no MPI call) while the other ranks
drain the queue; then every rank reports what it took. Prints one line on rank 0."""
import sys
import time

from mpi4py import MPI

from nes_mpi.work_queue import NodeWorkQueue

N = 3000
comm = MPI.COMM_WORLD
node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
queue = NodeWorkQueue(comm, node, N, 8)
for generation in (0, 1, 2):  # the two counters alternate: each generation hands out every member again
    queue.start(generation)
    comm.Barrier()
    mine = []
    if node.rank == 0:
        time.sleep(float(sys.argv[1]))  # "inside the simulator"
        left = queue.take(0, 0)  # woken up: the others must have taken everything meanwhile
        mine = [] if left is None else [left]
    else:
        while (m := queue.take(0, 0)) is not None:
            mine.append(m)
    everyone = comm.gather(mine, root=0)
    if comm.rank == 0:
        taken = sorted(m for ms in everyone for m in ms)
        print(f"generation {generation}: {len(taken)} taken, each once: {taken == list(range(N))}, "
              f"by node rank 0: {len(everyone[0])}", flush=True)
queue.free()
