/* comm.h: the few collective helpers the engine needs on top of MPI (large
 * broadcasts, agreement on success). The NCCL path of the CUDA backend sits behind
 * the same calls. */
#ifndef LS_COMM_H
#define LS_COMM_H

#include <mpi.h>
#include <stddef.h>

/* MPI_Bcast of any number of bytes (chunks of 1 GiB). */
int ls_bcast_bytes(void *buf, size_t bytes, int root, MPI_Comm comm);
/* Every rank passes its own status; returns LS_OK only if every rank passed LS_OK. */
int ls_agree(int status, MPI_Comm comm);
/* ls_agree for a step run under ls_error_defer(1): of the ranks that failed, only the
 * lowest prints its (deferred) message, so a failure every rank saw is reported once. */
int ls_agree_report(int status, MPI_Comm comm);

#endif
