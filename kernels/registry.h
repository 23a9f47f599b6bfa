/* registry.h: the backends this build knows, by name, with what they can do. The
 * engine picks a backend here (--backend NAME, or auto) and never includes a backend's
 * own header or compares backend names. Built in: "cpu" (kernels/cpu); "cuda" is a
 * plugin (liblayersweep-cuda.so, kernels/cuda) loaded with dlopen only when it is
 * asked for, or when auto finds an NVIDIA driver. */
#ifndef LS_REGISTRY_H
#define LS_REGISTRY_H

#include <mpi.h>
#include <stddef.h>

#include "backend.h"

typedef struct {
  int threads;  /* CPU threads per rank (<= 0: all cores) */
  int max_seq;  /* longest (padded) sequence attention will see */
  int bf16;     /* bf16 GEMM weights and inputs (backends with LS_BE_BF16) */
  MPI_Comm comm;/* the job: creation is collective */
  int precise_gemm; /* CPU: GEMM dot products summed in double over float32 chunks */
} ls_backend_params_t;

typedef struct {
  const char *name;    /* --backend NAME */
  unsigned caps;       /* LS_BE_* every backend of this kind has */
  int auto_priority;   /* auto: the usable entry with the highest priority wins */
  /* >0 if usable by this process, 0 with the reason in why. asked: the user named this
   * backend (a plugin is loaded to ask it); 0: auto is probing (nothing heavy is
   * loaded unless the hardware is there). Local, not collective. */
  int (*probe)(int asked, char *why, size_t cap);
  /* Collective over p->comm; NULL after one message (on the rank that failed). */
  ls_backend_t *(*create)(const ls_backend_params_t *p);
  /* optional: called once at the start of main, before MPI and any thread, with main's
   * argv; may restart the process (execv) with a better environment for its libraries */
  void (*preinit)(char **argv);
} ls_backend_entry_t;

/* The entry called name, NULL if none. */
const ls_backend_entry_t *ls_backend_lookup(const char *name);
int ls_backend_count(void);
const ls_backend_entry_t *ls_backend_at(int i);
/* "cpu, cuda" for messages */
const char *ls_backend_names(void);
/* Every registered backend's preinit (see ls_backend_entry_t). */
void ls_backends_preinit(char **argv);
/* Add an entry (a plugin's, or a test's); LS_ERR if the name is taken or the table full. */
int ls_backend_register(const ls_backend_entry_t *e);

/* Collective: create a backend of entry e and install its weight broadcast (the
 * backend's own, else MPI on a duplicate of p->comm). NULL on every rank where it
 * failed (after one message there); the caller agrees across ranks. */
ls_backend_t *ls_backend_create(const ls_backend_entry_t *e, const ls_backend_params_t *p);

/* ---- plugins ------------------------------------------------------------------------------- */
/* A plugin is a shared object exporting
 *   const ls_backend_entry_t *ls_plugin_entry(int abi);
 * returning its entry when abi == LS_PLUGIN_ABI (NULL otherwise). It resolves the
 * foundation's functions (ls_error, ls_calloc, ls_dtype_size, ...) and MPI from the
 * executable that loads it. */
#define LS_PLUGIN_ABI 1

/* Where the "cuda" plugin was loaded from ("" when it was not loaded). */
const char *ls_backend_plugin_loaded(void);

#endif
