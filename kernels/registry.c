/* registry.c: the backend registry (see registry.h) and the MPI weight broadcast that
 * backends without a device broadcast get. */
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ls_common.h"

extern const ls_backend_entry_t ls_backend_cpu_entry;   /* kernels/cpu */
extern const ls_backend_entry_t ls_backend_cuda_plugin; /* plugin.c: loads kernels/cuda */

#define MAX_BACKENDS 8
static const ls_backend_entry_t *table[MAX_BACKENDS];
static int n_table = -1;

static void builtins(void) {
  if (n_table >= 0) return;
  n_table = 0;
  table[n_table++] = &ls_backend_cpu_entry;
  table[n_table++] = &ls_backend_cuda_plugin;
}

void ls_backends_preinit(char **argv) {
  builtins();
  for (int i = 0; i < n_table; i++)
    if (table[i]->preinit) table[i]->preinit(argv);
}

int ls_backend_register(const ls_backend_entry_t *e) {
  builtins();
  if (ls_backend_lookup(e->name) || n_table == MAX_BACKENDS) return LS_ERR;
  table[n_table++] = e;
  return LS_OK;
}

const ls_backend_entry_t *ls_backend_lookup(const char *name) {
  builtins();
  for (int i = 0; i < n_table && name; i++)
    if (strcmp(table[i]->name, name) == 0) return table[i];
  return NULL;
}

int ls_backend_count(void) {
  builtins();
  return n_table;
}

const ls_backend_entry_t *ls_backend_at(int i) {
  builtins();
  return i >= 0 && i < n_table ? table[i] : NULL;
}

const char *ls_backend_names(void) {
  static char list[256];
  builtins();
  list[0] = '\0';
  for (int i = 0; i < n_table; i++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "",
             table[i]->name);
  return list;
}

/* ---- the MPI weight broadcast: MPI_Ibcast of 1 GiB chunks into host memory ------------------- */
#define BCAST_CHUNK ((size_t)1 << 30)

typedef struct {
  MPI_Comm comm;        /* a duplicate: broadcasts only */
  MPI_Request *req[2];  /* (cap) per slot */
  int nreq[2], cap;
} mpi_bcast_t;

static int mpi_start(ls_backend_t *be, int slot, void *dst, const void *src, size_t bytes) {
  mpi_bcast_t *m = be->bcast_ctx;
  int rank;
  MPI_Comm_rank(m->comm, &rank);
  if (rank == 0 && dst != src && bytes) memcpy(dst, src, bytes);
  const int n = (int)((bytes + BCAST_CHUNK - 1) / BCAST_CHUNK);
  if (n > m->cap) { /* sized on the first (largest-so-far) layer, not per call */
    for (int b = 0; b < 2; b++) {
      MPI_Request *r = realloc(m->req[b], sizeof(MPI_Request) * (size_t)n);
      if (!r) {
        ls_error("out of memory for the weight broadcast's requests");
        return LS_ERR;
      }
      m->req[b] = r;
    }
    m->cap = n;
  }
  for (int i = 0; i < n; i++) {
    size_t off = (size_t)i * BCAST_CHUNK, len = bytes - off < BCAST_CHUNK ? bytes - off : BCAST_CHUNK;
    MPI_Ibcast((char *)dst + off, (int)len, MPI_BYTE, 0, m->comm, &m->req[slot][i]);
  }
  m->nreq[slot] = n;
  return LS_OK;
}

static int mpi_wait(ls_backend_t *be, int slot) {
  mpi_bcast_t *m = be->bcast_ctx;
  if (m->nreq[slot]) MPI_Waitall(m->nreq[slot], m->req[slot], MPI_STATUSES_IGNORE);
  m->nreq[slot] = 0;
  return LS_OK;
}

static void mpi_progress(ls_backend_t *be) {
  mpi_bcast_t *m = be->bcast_ctx;
  for (int b = 0; b < 2; b++) {
    int done;
    if (m->nreq[b]) MPI_Testall(m->nreq[b], m->req[b], &done, MPI_STATUSES_IGNORE);
  }
}

static void mpi_free(ls_backend_t *be) {
  mpi_bcast_t *m = be->bcast_ctx;
  if (!m) return;
  for (int b = 0; b < 2; b++) {
    if (m->nreq[b]) MPI_Waitall(m->nreq[b], m->req[b], MPI_STATUSES_IGNORE);
    free(m->req[b]);
  }
  MPI_Comm_free(&m->comm);
  free(m);
  be->bcast_ctx = NULL;
}

static const ls_bcast_iface_t mpi_bcast = {mpi_start, mpi_wait, mpi_progress};

ls_backend_t *ls_backend_create(const ls_backend_entry_t *e, const ls_backend_params_t *p) {
  ls_backend_t *be = e->create(p);
  /* every rank takes part in the communicator duplication, even one that failed */
  MPI_Comm dup;
  MPI_Comm_dup(p->comm, &dup);
  if (!be) {
    MPI_Comm_free(&dup);
    return NULL;
  }
  be->host_visible = (be->caps & LS_BE_HOST_MEMORY) != 0;
  if (be->iface->bcast) {
    be->caps |= LS_BE_DEVICE_BCAST;
    be->bcast = be->iface->bcast;
    MPI_Comm_free(&dup);
    return be;
  }
  be->caps &= ~LS_BE_DEVICE_BCAST;
  mpi_bcast_t *m = ls_calloc(1, sizeof *m, "weight broadcast");
  if (!m) {
    MPI_Comm_free(&dup);
    be->iface->destroy(be);
    return NULL;
  }
  m->comm = dup;
  be->bcast = &mpi_bcast;
  be->bcast_ctx = m;
  be->bcast_free = mpi_free;
  return be;
}
