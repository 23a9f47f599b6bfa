/* comm.c: collective helpers (see comm.h). */
#include "comm.h"

#include <limits.h>

#include "ls_common.h"

int ls_bcast_bytes(void *buf, size_t bytes, int root, MPI_Comm comm) {
  const size_t chunk = (size_t)1 << 30;
  int rc = LS_OK;
  ls_wait_others("a broadcast");
  for (size_t off = 0; off < bytes && rc == LS_OK; off += chunk) {
    size_t n = bytes - off < chunk ? bytes - off : chunk;
    if (MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, comm) != MPI_SUCCESS) {
      ls_error("MPI_Bcast of %zu bytes failed", n);
      rc = LS_ERR;
    }
  }
  ls_wait_others(NULL);
  return rc;
}

int ls_agree(int status, MPI_Comm comm) {
  int ok = status == LS_OK, all = 0;
  ls_wait_others("agreeing on a step");
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
  ls_wait_others(NULL);
  return all ? LS_OK : LS_ERR;
}

int ls_agree_report(int status, MPI_Comm comm) {
  int rank, first = INT_MAX;
  MPI_Comm_rank(comm, &rank);
  int mine = status == LS_OK ? INT_MAX : rank;
  ls_wait_others("agreeing on a step");
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
  ls_wait_others(NULL);
  ls_error_release(first == rank);
  return first == INT_MAX ? LS_OK : LS_ERR;
}
