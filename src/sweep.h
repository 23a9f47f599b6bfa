/* sweep.h: the layer-outer sweep (DESIGN.md "data flow"): plan, embed, for each
 * layer { weights once, every microbatch, hooks, collective write }, final norm.
 * The entry point takes a communicator so tests can run it on any (sub)communicator. */
#ifndef LS_SWEEP_H
#define LS_SWEEP_H

#include <mpi.h>
#include <stdint.h>

typedef struct {
  const char *model_dir;    /* a directory, an http(s) URL or a hub id (io/hub.h) */
  const char *data_path;
  const char *out_path;
  const char *hooks;        /* default "residual_post" */
  const char *layers;       /* default "all" */
  const char *pool;         /* default "last_token" */
  const char *backend;      /* "auto" (default: cuda when every rank has a GPU), "cpu", "cuda" */
  const char *dtype;        /* "auto" (default: bf16 on cuda, float32 on cpu), "bf16", "float32" */
  int64_t microbatch_tokens;/* default 4096 */
  int threads;              /* CPU threads per rank; 0 = all cores / ranks per node */
  int force;
  int allow_long_prompts;
  int plan_only;            /* print the plan and stop */
  int progress;             /* -1 auto (bar on a terminal), 0 off, 1 plain lines */
  const char *command;      /* command line recorded in the file */
  const char *summary_json; /* if set, rank 0 writes the profile summary there as JSON */
  int resume;               /* continue from the last checkpoint */
  int checkpoint_every;     /* layers between checkpoints; 0 = auto (< 5% of the time), -1 = off */
  const char *checkpoint_dir; /* default: <out>.ckpt */
  int preload_weights;      /* read every computed layer into backend memory before the
                             * layer loop (benchmarks; needs memory for all of them) */
  const char *out_dtype;    /* stored activations: "float32" (default), "float16", "bfloat16" */
  const char *steer;        /* --steer FILE.json (NULL: no edits) */
  int compress;             /* 0 (default): contiguous activation datasets; 1..9: chunked
                             * (a layer x about 1 MiB of rows), deflate at that level */
  double stall_timeout;     /* seconds without progress that end the job; < 0 auto (max(600 s,
                             * 20x the slowest layer)), 0 off */
  int precise_gemm;         /* CPU: GEMM sums in double over 128-term float32 chunks */
  const char *reduce;       /* --reduce LIST: "mean,cov,pca:K,diffmeans" (NULL: none) */
  int no_store;             /* --no-store: keep the reductions only, not the activations */
  const char *project;      /* --project FILE:DATASET (NULL: activations stored as they are) */
  int assume_ranks;         /* plan --assume-ranks N: also predict the time at N ranks */
  int verify;               /* --verify N: prompts recomputed on the CPU oracle at every layer */
  int verify_strict;        /* --verify-strict: an error above the tolerance stops the run */
  const char *http_cache;   /* --http-cache DIR or "off" (NULL: the default directory) */
  int64_t http_cache_max;   /* --http-cache-max bytes (< 0: 50 GiB) */
  int overlap_writes;       /* default 1: a layer's rows are written by a thread while the
                             * next layer computes (a second host output buffer) */
  int64_t memory_limit;     /* host bytes one rank may use; 0: auto (95% of the memory
                             * available, shared by the node's ranks) */
  const char *spill_dir;    /* a residual stream beyond memory_limit goes here (NULL:
                             * <out>.spill) */
  int64_t max_tokens;       /* > 0: prompts cut to their first max_tokens tokens (0: none) */
} ls_run_opts_t;

void ls_run_opts_default(ls_run_opts_t *o);

/* Returned when SIGTERM / SIGINT stopped the sweep at a layer boundary (after a
 * checkpoint): the file is partial and --resume continues it. */
#define LS_STOPPED 3

/* Collective over comm. Returns 0 on success (file complete), LS_STOPPED after a
 * signal, -1 on error (one message printed; any output file is left with status
 * "partial"). */
int ls_sweep_run(const ls_run_opts_t *o, MPI_Comm comm);

#endif
