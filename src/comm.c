/* comm.c: collective helpers (see comm.h). */
#include "comm.h"

#include <limits.h>

#include "ls_common.h"

int ls_bcast_bytes(void *buf, size_t bytes, int root, MPI_Comm comm) {
  const size_t chunk = (size_t)1 << 30;
  for (size_t off = 0; off < bytes; off += chunk) {
    size_t n = bytes - off < chunk ? bytes - off : chunk;
    if (MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, root, comm) != MPI_SUCCESS) {
      ls_error("MPI_Bcast of %zu bytes failed", n);
      return LS_ERR;
    }
  }
  return LS_OK;
}

int ls_agree(int status, MPI_Comm comm) {
  int ok = status == LS_OK, all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
  return all ? LS_OK : LS_ERR;
}

int ls_agree_report(int status, MPI_Comm comm) {
  int rank, first = INT_MAX;
  MPI_Comm_rank(comm, &rank);
  int mine = status == LS_OK ? INT_MAX : rank;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
  ls_error_release(first == rank);
  return first == INT_MAX ? LS_OK : LS_ERR;
}
