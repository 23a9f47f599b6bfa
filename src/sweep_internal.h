/* sweep_internal.h: the state of one sweep, in parts that each have one owner:
 *   ls_select_t   what is captured (hooks, layers, pooling)        hooks.c / sweep.c
 *   ls_shard_t    this rank's prompts, row layout, microbatches   plan.c
 *   ls_bufs_t     backend and host buffers, allocated once        sweep.c
 *   ls_output_t   the HDF5 file and its per-layer markers         output.c
 *   ls_profile_t  per-layer timings and bytes                     sweep.c, report.c
 *   ls_ckstate_t  checkpoints, signals, resume                    resume.c
 * sweep_t holds one of each plus what every part reads (options, communicator, model,
 * dataset, backend). Not part of the library's interface. */
#ifndef LS_SWEEP_INTERNAL_H
#define LS_SWEEP_INTERNAL_H

#include <mpi.h>
#include <stdint.h>

#include "backend.h"
#include "checkpoint.h"
#include "comm.h"
#include "dataset.h"
#include "family.h"
#include "h5out.h"
#include "hooks.h"
#include "lock.h"
#include "ls_common.h"
#include "model.h"
#include "project.h"
#include "reduce.h"
#include "spill.h"
#include "steer.h"
#include "verify.h"
#include "sweep.h"
#include "weights.h"
#include "watchdog.h"
#include "writer.h"

#define FORMAT_VERSION "1"

typedef struct {
  unsigned hooks;     /* 1 << ls_hook_t */
  ls_pool_t pool;
  int *layers, n_sel; /* selected layers, ascending */
  int *sel_index;     /* (n_layers) position in the output, -1 if not selected */
  int n_run;          /* layers computed: 0 .. n_run-1 */
  int *moe_layers, n_moe_sel; /* the selected layers that are MoE (router_logits' axis) */
  int *moe_index;     /* (n_layers) position on router_logits' layer axis, -1 if none */
} ls_select_t;

typedef struct {
  int64_t *bounds;    /* (size + 1) prompt ranges per rank */
  int64_t p0, p1, t0, t1;
  int64_t n_prompts, n_tokens; /* this rank */
  int64_t out_rows, out_row0;  /* rows this rank writes (prompts or tokens) */
  int64_t n_out_rows;          /* global rows of each hook dataset */
  /* Row layout: prompt i of this rank occupies rows poff[i] .. poff[i] + len_i of the
   * residual stream, and each prompt starts at a multiple of `align` (the backend's
   * row alignment); rows up to poff[i + 1] are padding that continues the prompt
   * causally (real tokens never see them). */
  int align;
  int64_t *poff;      /* (n_prompts + 1) padded row offsets */
  int64_t n_rows;     /* padded rows of this rank */
  /* Storage of the residual stream between layers: with compact (row alignment > 1 on a
   * host-memory backend) only the real rows are kept, prompt i at rows soff[i] ..
   * soff[i] + len_i, and each microbatch is laid out padded in the staging buffer for the
   * block: padding costs no memory in proportion to the prompt count. Else soff = poff. */
  int compact;
  int64_t *soff;      /* (n_prompts + 1) stored row offsets */
  int64_t n_store;    /* stored rows of this rank */
  /* microbatches: prompts [mb_p[i], mb_p[i+1]) */
  int n_mb;
  int64_t *mb_p;
  int T_max;          /* most rows in one microbatch */
  int32_t *seq_start; /* per microbatch (n + 1) relative padded offsets, packed */
  int32_t *seq_len;   /* per microbatch (n) real lengths, packed like seq_start */
  int64_t *seq_start_off; /* (n_mb) where each microbatch's seq_start begins */
  int32_t *pos;       /* (n_rows) position of each row in its prompt */
  int *mb_max_len;    /* (n_mb) longest padded prompt of each microbatch */
  int max_len;        /* longest padded prompt of the whole dataset (rope table rows) */
} ls_shard_t;

/* Backend memory unless said otherwise; with a host-memory backend (CPU) the *_d
 * arrays alias their host versions. */
typedef struct {
  float *x;           /* (n_rows, H) residual stream: backend memory, or page-locked
                       * host memory when x_on_host */
  int x_on_host;      /* the residual stream does not fit in backend memory: it lives
                       * on the host and each microbatch is staged through xd */
  float *xd;          /* (T_max, H) staging for one microbatch when x_on_host, spilled or
                       * the stream is stored compact */
  int spilled;        /* the residual stream does not fit in host memory (--memory-limit):
                       * it lives in a file (io/spill.h), x is NULL, and each microbatch
                       * comes through a slot of the spill's ring into xd */
  char spill_dir[4200];                /* --spill-dir, or OUT.spill */
  ls_spill_t *spill;
  void *spill_slot[LS_SPILL_SLOTS];    /* the ring's host buffers (page-locked on a device) */
  int64_t *spill_rows;                 /* (n_mb + 1) first stored row of each microbatch */
  float *x_mb;        /* the slot of the microbatch between stage_in and stage_out */
  int io_err;         /* a spill read failed in this layer (said; failed at finish_layer) */
  float *x_ckpt;      /* (n_rows, H) page-locked host copy for checkpoints of a device
                       * residual stream, allocated at the first checkpoint, kept */
  float *scratch;     /* the family's block scratch for T_max rows */
  void *wbuf;         /* one layer's weights in backend format (with --preload-weights:
                       * every computed layer's) */
  size_t wbuf_bytes;  /* one layer's share of wbuf */
  void **lw;          /* (n_slots) the current layer's tensors in wbuf */
  void **lw_all;      /* (n_layers, n_slots) --preload-weights only */
  float *final_norm_w;/* (H) */
  float *final_bias_w;/* (H) LayerNorm families, else NULL */
  void *host_scratch; /* the family's host scratch (host_scratch_bytes), or NULL */
  float *cos_tab[2], *sin_tab[2]; /* (max_len, rope_dim / 2), host: [0] cfg->rope, [1]
                                   * cfg->rope_local (when cfg->local_rope) */
  float *cos_d[2], *sin_d[2];
  int32_t *seq_start_d, *seq_len_d, *pos_d; /* backend copies of the shard's arrays */
  float *out[LS_HOOK_COUNT];      /* (out_rows, width) per requested hook, backend memory */
  float *out_host[LS_HOOK_COUNT]; /* the same rows on the host, as written to the file */
  float *out_alt[LS_HOOK_COUNT];  /* with overlapped writes: the host rows of the layer the
                                   * writer holds (swapped with out_host, and with out on a
                                   * host-memory backend, at each submit) */
} ls_bufs_t;

typedef struct {
  ls_h5out_t h5;
  int open;
  ls_lock_t lock;         /* rank 0: the output's lock, held for the whole run */
  int64_t *done_marks;    /* (n_sel) layer index once its rows are written, else -1 */
  int fault_layer;        /* test switch LS_FAULT_WRITE_LAYER: fail this layer's write */
  ls_dtype_t out_dt;      /* --out-dtype: how activations are stored (F32, F16, BF16) */
  int overlap;            /* layers are written by the writer thread (same on every rank) */
  ls_writer_t writer;
  uint64_t raw_off[LS_HOOK_COUNT]; /* each per-layer hook dataset's raw data in the file */
  int in_flight;          /* the layer the writer holds, -1 none */
} ls_output_t;

typedef struct {
  double *t_load, *t_forward, *t_hooks, *t_write; /* (n_layers) */
  double t_embed, t_total, t_preload;
  double t_loop;          /* the layer loop's seconds (this run's layers) */
  int64_t *expert_rows;   /* (n_layers, n_experts) MoE models: real rows routed to each
                           * expert, summed over ranks after each layer (this run's layers) */
  int stats_next;         /* the first layer whose expert_rows are not in the file yet */
  uint64_t embed_bytes;
  double spill[5];        /* rank 0, at the end: the spilled ranks' most bytes read, written,
                           * I/O thread seconds, layer-loop seconds waited; ranks spilled */
  int n_ckpt;             /* checkpoints taken by this run */
  double t_ckpt;          /* seconds they took (max over ranks) */
} ls_profile_t;

typedef struct {
  char dir[4200];
  ls_ckpt_meta_t meta;    /* this run's fingerprints */
  int last;               /* layer_next of the last checkpoint taken */
  double since_s;         /* layer time since then (max over ranks) */
  double cost_s;          /* (estimated) seconds one checkpoint takes */
} ls_ckstate_t;

/* predict.c: the plan's time model (rates measured by short probes, phases predicted) */
typedef struct {
  int valid;
  double gemm_rate, conv_rate, disk_rate, bcast_rate, write_rate; /* FLOP/s, bytes/s */
  double spill_rate;      /* the slowest spilled rank's --spill-dir: write + read back, bytes/s */
  double spill_bytes;     /* the most a spilled rank moves per layer (read + write) */
  double read_s, bcast_s, load_s, forward_s, write_s, wall_s;     /* over the layers to run */
  double spill_s;
  const char *bottleneck;
  double probe_s;
} ls_predict_t;

typedef struct {
  const ls_run_opts_t *o;
  MPI_Comm comm;
  int rank, size;
  ls_model_t model;
  const ls_config_t *cfg;
  const ls_family_t *fam;
  ls_dataset_t data;
  ls_backend_t *be;
  int threads;
  int start;              /* first layer computed by this run (> 0 when resumed) */
  ls_select_t sel;
  ls_shard_t sh;
  ls_bufs_t buf;
  ls_output_t out;
  ls_profile_t prof;
  ls_ckstate_t ck;
  ls_watchdog_t wd;       /* ends the job when a rank or link is lost (--stall-timeout) */
  ls_steer_t steer;       /* --steer edits */
  float **steer_v;        /* (steer.n) each edit's vector in backend memory */
  int32_t *steer_idx, *steer_idx_h; /* (T_max) rows of a "last" edit: backend, host */
  ls_reduce_t red;        /* --reduce */
  ls_project_t proj;      /* --project */
  float *proj_tmp;        /* (out_rows, K) projected rows */
  ls_verify_t vf;         /* --verify */
  ls_predict_t pred;      /* the plan's time prediction */
} sweep_t;

static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Hook h's row width: hidden, or n_experts for router_logits. */
static inline int ls_sw_hook_width(const sweep_t *s, int h) {
  return h == LS_HOOK_ROUTER_LOGITS ? s->cfg->n_experts : s->cfg->hidden;
}
/* Hook h's stored row width: --project's K for the hidden-wide hooks, else the width. */
static inline int ls_sw_store_width(const sweep_t *s, int h) {
  return s->proj.K > 0 && h != LS_HOOK_ROUTER_LOGITS ? s->proj.K : ls_sw_hook_width(s, h);
}
/* Length of hook h's layer axis (1 for final_norm, which has none). */
static inline int ls_sw_hook_layers(const sweep_t *s, int h) {
  return h == LS_HOOK_ROUTER_LOGITS ? s->sel.n_moe_sel : h == LS_HOOK_FINAL_NORM ? 1 : s->sel.n_sel;
}
/* Layer L's position on hook h's layer axis, -1 when hook h has no rows for it. */
static inline int ls_sw_hook_index(const sweep_t *s, int h, int L) {
  return h == LS_HOOK_ROUTER_LOGITS ? s->sel.moe_index[L] : s->sel.sel_index[L];
}

/* Run one collective step on every rank; if it failed anywhere, the lowest failing
 * rank reports it (one line) and the caller returns LS_ERR on every rank. */
#define COLLECTIVE_STEP(s, expr)                                  \
  do {                                                            \
    ls_error_defer(1);                                            \
    int step_rc_ = (expr);                                        \
    if (ls_agree_report(step_rc_, (s)->comm)) return LS_ERR;      \
  } while (0)

/* plan.c */
int ls_sw_load_dataset(sweep_t *s);
int ls_shard_build(ls_shard_t *sh, const ls_dataset_t *d, int rank, int size, int align,
                   int64_t microbatch_tokens, ls_pool_t pool);
void ls_shard_free(ls_shard_t *sh);
/* rows (size + 1) <- the first padded row of each rank's shard in the dataset's row order */
int ls_shard_row_starts(const ls_dataset_t *d, int size, int align, int compact, int64_t *rows);
/* sh->compact and its stored row offsets (after ls_shard_build) */
int ls_shard_storage(ls_shard_t *sh, const ls_dataset_t *d, int compact);
int ls_sw_plan(sweep_t *s);
size_t ls_sw_layer_weight_bytes(const ls_model_t *m, const ls_backend_t *be);
void ls_sw_carve_layer(const ls_model_t *m, const ls_backend_t *be, int layer, void *base,
                       void **w);
int ls_sw_max_gemm_in(const ls_model_t *m);
/* output.c */
extern const char *ls_sw_profile_fields[7];
int ls_sw_write_str_attr(sweep_t *s, const char *name, const char *v);
int ls_sw_create_output(sweep_t *s);
int ls_sw_write_hook(sweep_t *s, ls_hook_t h, int sel);
/* Overlapped writes (src/writer.c): find the datasets' raw offsets and start the writer
 * (collective; every rank agrees to overlap or not, a reason logged when not). */
int ls_sw_writer_start(sweep_t *s);
/* Collective, after layer L (selected as sel) is on the host: wait for the layer in
 * flight and mark it complete, then hand L to the writer. */
int ls_sw_write_layer(sweep_t *s, int L, int sel);
/* Collective: wait for the layer in flight and mark it complete (before a checkpoint,
 * the final norm and the end). */
int ls_sw_drain_writes(sweep_t *s);
void ls_sw_writer_stop(sweep_t *s);
int ls_sw_write_profile(sweep_t *s, const ls_wpipe_t *wp);
/* Collective: the rows of /router_stats/expert_rows of this run's MoE layers below `upto`
 * not written yet (at checkpoints, so that a resumed run's file has every layer's) */
int ls_sw_write_router_stats(sweep_t *s, int upto);
int ls_sw_check_output(sweep_t *s);
/* Collective, resuming with another rank count: /profile's datasets and /rank re-made for
 * this run's ranks (the earlier runs' timings are dropped), n_ranks updated */
int ls_sw_reshape_profile(sweep_t *s);
/* reduce.c (reduce.h): collective. setup after the plan; create with the output (after
 * its coordinates); reduce_hook for hook h's rows at position `at` of its layer axis
 * (layer: the model layer, -1 final_norm), before they are narrowed or projected. */
int ls_sw_reduce_setup(sweep_t *s);
int ls_sw_reduce_create(sweep_t *s);
int ls_sw_reduce_hook(sweep_t *s, int h, int at, int layer);
void ls_sw_reduce_free(sweep_t *s);
/* verify.c (verify.h): setup (collective, after the buffers), create (with the output),
 * capture (a hook point), convert (rank 0, while it holds layer L's raw host bytes), layer
 * (collective, after layer L's rows are on the host) */
int ls_sw_verify_setup(sweep_t *s);
int ls_sw_verify_create(sweep_t *s);
void ls_sw_verify_capture(sweep_t *s, int h, const float *rows, int width, int mb,
                          const ls_batch_t *b);
int ls_sw_verify_convert(sweep_t *s, int L, const void *raw);
int ls_sw_verify_layer(sweep_t *s, int L);
void ls_sw_verify_free(sweep_t *s);
/* sweep.c: layer L in backend be's format at base from its raw checkpoint bytes (host
 * memory, or backend memory when raw_on_device); w (n_slots) points into it */
int ls_sw_convert_layer(sweep_t *s, ls_backend_t *be, int layer, const void *raw,
                        int raw_on_device, void *base, void **w);
/* predict.c: collective, after the plan: probes, then the prediction printed (rank 0);
 * refresh after a resume moved s->start; print: rank 0, the summary's comparison line */
int ls_sw_predict(sweep_t *s);
void ls_sw_predict_refresh(sweep_t *s);
void ls_sw_print_prediction(const sweep_t *s, double read_s, double bcast_s, double load_s,
                            double forward_s, double write_s);
/* report.c */
void ls_sw_progress(sweep_t *s, int layer, double elapsed);
/* LS_ERR (said) when the --summary-json file could not be written */
int ls_sw_print_summary(sweep_t *s, const ls_wpipe_t *wp);
/* resume.c */
void ls_sw_install_signals(void);
int ls_sw_maybe_checkpoint(sweep_t *s, int next, double layer_s);
void ls_sw_checkpoint_dir(sweep_t *s);
void ls_sw_fingerprints(sweep_t *s);
int ls_sw_try_resume(sweep_t *s);

#endif
