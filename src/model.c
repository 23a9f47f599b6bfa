/* model.c: model description, tensor validation and raw reads (see model.h). */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>
#include <unistd.h>

#include "comm.h"
#include "hub.h"
#include "ls_common.h"

/* ---- validation on rank 0 ------------------------------------------------------------ */
static void shape_str(char *buf, size_t cap, const int64_t *shape, int ndim) {
  size_t o = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ndim && o < cap; i++)
    o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (o < cap) snprintf(buf + o, cap - o, "]");
}

static const ls_st_tensor_t *expect_tensor(const ls_model_t *m, const char *name,
                                           const int64_t *shape, int ndim) {
  const ls_st_tensor_t *t = ls_st_find(&m->st, name);
  if (!t) {
    ls_error("%s: tensor %s is missing from the checkpoint; is config.json (%s) the right "
             "config for these weights?", m->st.dir, name, m->cfg.arch_name);
    return NULL;
  }
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    char want[96], got[96];
    shape_str(want, sizeof want, shape, ndim);
    shape_str(got, sizeof got, t->shape, t->ndim);
    ls_error("%s: tensor %s has shape %s but config.json implies %s; the config and the "
             "weights do not match", m->st.files[t->file].path, name, got, want);
    return NULL;
  }
  return t;
}

/* The family's table for every layer (every rank builds the same from cfg). */
static int build_table(ls_model_t *m) {
  const ls_config_t *c = &m->cfg;
  m->fam = ls_family_get(c->family);
  if (!m->fam) {
    ls_error("model description: unknown family %d (ranks run different layersweep builds?)",
             c->family);
    return LS_ERR;
  }
  m->n_slots = ls_family_slots(m->fam, c);
  m->slots = ls_calloc((size_t)c->n_layers * (size_t)m->n_slots, sizeof *m->slots, "weight table");
  m->layer_bytes = ls_calloc((size_t)c->n_layers, sizeof *m->layer_bytes, "weight table");
  ls_wspec_t *specs = ls_calloc((size_t)m->n_slots, sizeof *specs, "weight table");
  int rc = m->slots && m->layer_bytes && specs ? LS_OK : LS_ERR;
  for (int L = 0; L < c->n_layers && rc == LS_OK; L++) {
    m->fam->layer_tensors(c, L, specs);
    for (int i = 0; i < m->n_slots; i++) m->slots[(size_t)L * m->n_slots + i].spec = specs[i];
  }
  if (rc == LS_OK) {
    ls_wspec_t g[LS_G_COUNT];
    memset(g, 0, sizeof g);
    m->fam->global_tensors(c, g);
    for (int i = 0; i < LS_G_COUNT; i++) m->glob[i].spec = g[i];
  }
  free(specs);
  return rc;
}

/* Checkpoints saved from the bare model (GPT2Model) lack the family's optional name
 * prefix: when the embedding is found only without it, drop it from every name. */
static void drop_optional_prefix(ls_model_t *m) {
  const char *pre = m->fam->optional_prefix;
  const size_t n = pre ? strlen(pre) : 0;
  const char *embed = m->glob[LS_G_EMBED].spec.name;
  if (!n || ls_st_find(&m->st, embed) || strncmp(embed, pre, n) != 0 ||
      !ls_st_find(&m->st, embed + n))
    return;
  const size_t total = (size_t)m->cfg.n_layers * (size_t)m->n_slots;
  for (size_t i = 0; i < total + LS_G_COUNT; i++) {
    ls_wspec_t *w = i < total ? &m->slots[i].spec : &m->glob[i - total].spec;
    if (strncmp(w->name, pre, n) == 0) memmove(w->name, w->name + n, strlen(w->name + n) + 1);
  }
}

/* An FP8 GEMM weight and its block scales: the config must say how they were made, and
 * <name>_scale_inv must be float32 with one scale per block (edge blocks partial). */
static int validate_fp8(ls_model_t *m, ls_wslot_t *s, const ls_st_tensor_t *t) {
  const ls_config_t *c = &m->cfg;
  const char *file = m->st.files[t->file].path;
  if (!c->fp8) {
    ls_error("%s: tensor %s is %s but config.json has no quantization_config with "
             "quant_method \"fp8\"; is config.json the right one for these weights?", file,
             s->spec.name, ls_dtype_name(t->dtype));
    return LS_ERR;
  }
  if (s->spec.kind != LS_WK_MATRIX || s->spec.transpose || s->spec.view_count > 0 ||
      t->dtype != (ls_dtype_t)c->fp8_dtype) {
    ls_error("%s: tensor %s is %s; FP8 is read for unfused GEMM weights in the format "
             "quantization_config names (%s) only", file, s->spec.name, ls_dtype_name(t->dtype),
             ls_dtype_name((ls_dtype_t)c->fp8_dtype));
    return LS_ERR;
  }
  char name[LS_WNAME_MAX + 16];
  snprintf(name, sizeof name, "%s_scale_inv", s->spec.name);
  s->scale_rows = (s->spec.shape[0] + c->fp8_block[0] - 1) / c->fp8_block[0];
  s->scale_cols = (s->spec.shape[1] + c->fp8_block[1] - 1) / c->fp8_block[1];
  const int64_t want[2] = {s->scale_rows, s->scale_cols};
  if (!ls_st_find(&m->st, name)) {
    ls_error("%s: tensor %s is %s but its block scales %s are missing from the checkpoint; "
             "re-download or re-convert it", file, s->spec.name, ls_dtype_name(t->dtype), name);
    return LS_ERR;
  }
  const ls_st_tensor_t *sc = expect_tensor(m, name, want, 2);
  if (!sc) return LS_ERR;
  if (sc->dtype != LS_DT_F32) {
    ls_error("%s: tensor %s is %s; FP8 block scales must be F32", m->st.files[sc->file].path,
             name, ls_dtype_name(sc->dtype));
    return LS_ERR;
  }
  return LS_OK;
}

static int validate_slot(ls_model_t *m, ls_wslot_t *s) {
  if (!s->spec.present) return LS_OK;
  const ls_st_tensor_t *t = expect_tensor(m, s->spec.name, s->spec.shape, s->spec.ndim);
  if (!t) return LS_ERR;
  const ls_wspec_t *w = &s->spec;
  const int64_t rows = w->ndim == 2 && w->transpose ? w->shape[1] : w->shape[0];
  if ((w->view_count > 0 && (w->view_row0 < 0 || w->view_block <= 0 ||
                             w->view_row0 + (w->view_count - 1) * w->view_stride + w->view_block > rows)) ||
      (w->view_perm != LS_VIEW_PLAIN &&
       (w->view_count <= 0 || w->view_split < 0 || w->view_split >= w->view_block ||
        (w->view_perm == LS_VIEW_ROTATE_DEINT && (w->view_block - w->view_split) % 2 != 0)))) {
    ls_error("%s: the part of tensor %s this family takes lies outside its %lld rows (a "
             "layersweep bug: report it)", m->st.dir, w->name, (long long)rows);
    return LS_ERR;
  }
  if (!ls_dtype_is_float(t->dtype)) {
    ls_error("%s: tensor %s is %s; the forward needs it as F32, F16, BF16 (or block-scaled "
             "FP8): convert the checkpoint", m->st.files[t->file].path, w->name,
             ls_dtype_name(t->dtype));
    return LS_ERR;
  }
  s->dtype = t->dtype;
  s->numel = ls_wspec_numel(w);
  s->scale_rows = s->scale_cols = 0;
  return ls_dtype_is_fp8(t->dtype) ? validate_fp8(m, s, t) : LS_OK;
}

static int validate_root(ls_model_t *m, const char *arg) {
  ls_location_t loc;
  if (ls_location_resolve(arg, &loc)) return LS_ERR;
  const char *dir = loc.base;
  snprintf(m->source, sizeof m->source, "%s",
           loc.kind == LS_LOC_HUB ? "hub" : loc.kind == LS_LOC_URL ? "http" : "local");
  snprintf(m->location, sizeof m->location, "%s", dir);
  snprintf(m->hub_id, sizeof m->hub_id, "%s", loc.hub_id);
  snprintf(m->revision, sizeof m->revision, "%s", loc.revision);
  struct stat st;
  if (!ls_src_is_url(dir) && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
    ls_error("%s: not a directory; --model must be a Hugging Face model directory "
             "(config.json + safetensors), an http(s) URL of one or a hub id org/name", dir);
    return LS_ERR;
  }
  char path[4200];
  snprintf(path, sizeof path, "%s/config.json", dir);
  m->config_json = ls_src_read_text(path, LS_CONFIG_MAX_BYTES, NULL);
  if (!m->config_json || ls_config_parse(m->config_json, path, &m->cfg) ||
      build_table(m) || ls_st_open_dir(dir, &m->st))
    return LS_ERR;
  drop_optional_prefix(m);
  for (int g = 0; g < LS_G_COUNT; g++)
    if (validate_slot(m, &m->glob[g])) return LS_ERR;
  /* quiet but wrong: a checkpoint with more layers than config.json says */
  ls_wspec_t *extra = ls_calloc((size_t)m->n_slots, sizeof *extra, "weight table");
  if (!extra) return LS_ERR;
  m->fam->layer_tensors(&m->cfg, m->cfg.n_layers, extra);
  for (int i = 0; i < m->n_slots; i++)
    if (extra[i].present && ls_st_find(&m->st, extra[i].name)) {
      ls_warn("%s: the checkpoint holds %s, but config.json says num_hidden_layers = %d; only "
              "the first %d layers are swept (is config.json the right one?)", dir,
              extra[i].name, m->cfg.n_layers, m->cfg.n_layers);
      break;
    }
  free(extra);
  m->total_tensor_bytes = 0; /* the layers, the final norm and its bias */
  for (int g = LS_G_FINAL_NORM; g <= LS_G_FINAL_BIAS; g++)
    m->total_tensor_bytes += (uint64_t)m->glob[g].numel * ls_dtype_size(m->glob[g].dtype);
  for (int L = 0; L < m->cfg.n_layers; L++) {
    uint64_t off = 0;
    for (int i = 0; i < m->n_slots; i++) {
      ls_wslot_t *s = &m->slots[(size_t)L * m->n_slots + i];
      if (validate_slot(m, s)) return LS_ERR;
      if (!s->spec.present) continue;
      s->offset = off;
      off += ((uint64_t)s->numel * ls_dtype_size(s->dtype) + 63) / 64 * 64;
      s->scale_offset = off; /* FP8: the scales follow the weight */
      off += ((uint64_t)(s->scale_rows * s->scale_cols) * sizeof(float) + 63) / 64 * 64;
    }
    m->layer_bytes[L] = off;
    m->total_tensor_bytes += off;
    if (off > m->max_layer_bytes) m->max_layer_bytes = off;
  }
  return LS_OK;
}

/* ---- open: validate on rank 0, broadcast the description -------------------------------- */
int ls_model_open(ls_model_t *m, const char *dir, MPI_Comm comm) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  memset(m, 0, sizeof *m);
  m->is_root = rank == 0;
  int ok = !m->is_root || validate_root(m, dir) == LS_OK;
  MPI_Bcast(&ok, 1, MPI_INT, 0, comm);
  if (!ok) {
    ls_model_close(m);
    return LS_ERR;
  }
  /* the config, then the tables every rank builds from it are filled in from rank 0's */
  MPI_Bcast(&m->cfg, sizeof m->cfg, MPI_BYTE, 0, comm);
  uint64_t scalars[3] = {m->max_layer_bytes, m->total_tensor_bytes,
                         m->config_json ? strlen(m->config_json) : 0};
  MPI_Bcast(scalars, 3, MPI_UINT64_T, 0, comm);
  m->max_layer_bytes = scalars[0];
  m->total_tensor_bytes = scalars[1];
  ok = 1;
  if (!m->is_root) {
    m->config_json = ls_malloc(scalars[2] + 1, "config.json text");
    ok = m->config_json && build_table(m) == LS_OK;
  }
  if (ls_agree(ok ? LS_OK : LS_ERR, comm)) {
    ls_model_close(m);
    return LS_ERR;
  }
  const int nl = m->cfg.n_layers;
  ls_bcast_bytes(m->config_json, scalars[2] + 1, 0, comm);
  ls_bcast_bytes(m->slots, sizeof *m->slots * (size_t)nl * (size_t)m->n_slots, 0, comm);
  MPI_Bcast(m->glob, sizeof m->glob, MPI_BYTE, 0, comm);
  MPI_Bcast(m->layer_bytes, nl, MPI_UINT64_T, 0, comm);
  MPI_Bcast(m->source, sizeof m->source, MPI_CHAR, 0, comm);
  MPI_Bcast(m->location, sizeof m->location, MPI_CHAR, 0, comm);
  MPI_Bcast(m->hub_id, sizeof m->hub_id, MPI_CHAR, 0, comm);
  MPI_Bcast(m->revision, sizeof m->revision, MPI_CHAR, 0, comm);
  return LS_OK;
}

void ls_model_close(ls_model_t *m) {
  if (m->is_root) ls_st_close(&m->st);
  free(m->slots);
  free(m->layer_bytes);
  free(m->config_json);
  free(m->rd_segs);
  free(m->rd_spans);
  free(m->rd_wants);
  m->rd_segs = NULL;
  m->rd_spans = NULL;
  m->rd_wants = NULL;
  m->rd_cap = 0;
  m->slots = NULL;
  m->layer_bytes = NULL;
  m->config_json = NULL;
}

/* ---- raw reads (rank 0) -------------------------------------------------------------------- */
/* NaN or Inf in a weight poisons every activation after it: refuse the checkpoint,
 * naming the tensor (element index counted from first_elem). */
/* the first index in [0, n) of a 16-bit (or 32-bit) value v with (v & mask) == mask, or
 * UINT64_MAX: blocks without one are passed at memory speed (a vectorized OR over the
 * block), a block with one is searched */
#define FINITE_BLOCK 4096
#define FIRST_MATCH(T, v, n, mask, out)                                           \
  do {                                                                            \
    (out) = UINT64_MAX;                                                           \
    for (uint64_t b0 = 0; b0 < (n) && (out) == UINT64_MAX; b0 += FINITE_BLOCK) {  \
      const uint64_t b1 = (n) - b0 < FINITE_BLOCK ? (n) : b0 + FINITE_BLOCK;      \
      unsigned hit = 0;                                                           \
      for (uint64_t i = b0; i < b1; i++) hit |= ((T)((v)[i] & (mask)) == (T)(mask)); \
      for (uint64_t i = b0; hit && i < b1; i++)                                   \
        if ((T)((v)[i] & (mask)) == (T)(mask)) { (out) = i; break; }             \
    }                                                                             \
  } while (0)

/* The first non-finite element of raw (n elements of t's dtype), or UINT64_MAX. */
static uint64_t first_nonfinite(const ls_st_tensor_t *t, const void *raw, uint64_t n) {
  uint64_t bad = UINT64_MAX;
  if (ls_dtype_is_fp8(t->dtype)) { /* E4M3: S.1111.111 is NaN; E5M2: exponent 11111 */
    const uint8_t *v = raw;
    if (t->dtype == LS_DT_F8_E4M3) FIRST_MATCH(uint8_t, v, n, 0x7fu, bad);
    else FIRST_MATCH(uint8_t, v, n, 0x7cu, bad);
  } else if (t->dtype == LS_DT_F32) {
    const uint32_t *v = raw;
    FIRST_MATCH(uint32_t, v, n, 0x7f800000u, bad);
  } else {
    const uint16_t *v = raw;
    if (t->dtype == LS_DT_BF16) FIRST_MATCH(uint16_t, v, n, 0x7f80u, bad);
    else FIRST_MATCH(uint16_t, v, n, 0x7c00u, bad);
  }
  return bad;
}

static int report_nonfinite(const ls_model_t *m, const ls_st_tensor_t *t, uint64_t bad) {
  ls_error("%s: tensor %s has a NaN or Inf value (element %llu); the checkpoint is corrupt: "
           "re-download or re-convert it", m->st.files[t->file].path, t->name,
           (unsigned long long)bad);
  return LS_ERR;
}

static int check_finite(const ls_model_t *m, const ls_st_tensor_t *t, const void *raw,
                        uint64_t n, uint64_t first_elem) {
  const uint64_t bad = first_nonfinite(t, raw, n);
  return bad == UINT64_MAX ? LS_OK : report_nonfinite(m, t, first_elem + bad);
}

/* dst <- the slot's part of the stored tensor raw (es-byte elements): transposed when
 * the spec says so, then the view's rows in order. */
static void take_view(const ls_wspec_t *w, const char *raw, size_t es, char *dst) {
  const int64_t cols = ls_wspec_cols(w);
  const int64_t count = w->view_count > 0 ? w->view_count : 1;
  const int64_t block = w->view_count > 0 ? w->view_block : ls_wspec_rows(w);
  int64_t k = 0;
  const int64_t moved = block - w->view_split; /* LS_VIEW_ROTATE*: rows put first */
  for (int64_t j = 0; j < count; j++)
    for (int64_t i = 0; i < block; i++, k++) {
      int64_t src = i; /* the row of the block that lands at i */
      if (w->view_perm != LS_VIEW_PLAIN) {
        if (i >= moved) src = i - moved;
        else if (w->view_perm == LS_VIEW_ROTATE_DEINT)
          src = w->view_split + (i < moved / 2 ? 2 * i : 2 * (i - moved / 2) + 1);
        else src = w->view_split + i;
      }
      const int64_t r = (w->view_count > 0 ? w->view_row0 + j * w->view_stride : 0) + src;
      char *out = dst + (size_t)(k * cols) * es;
      if (w->transpose) /* logical (r, c) is stored (c, r) of a (cols, rows) tensor */
        for (int64_t c = 0; c < cols; c++)
          memcpy(out + (size_t)c * es, raw + (size_t)(c * w->shape[1] + r) * es, es);
      else
        memcpy(out, raw + (size_t)(r * cols) * es, (size_t)cols * es);
    }
}

/* Bytes of other tensors up to this size between two wanted ones are read and dropped
 * rather than starting a new range (one request instead of two over HTTP). */
#define GAP_MAX ((uint64_t)256 << 10)

typedef struct want_s {
  const ls_st_tensor_t *t;
  void *dst;
  struct want_s *home;   /* the entry in table order (the sorted copies point back) */
  uint64_t shown, bad;   /* bytes the read showed us (checked as they came), first bad element */
} want_t;

/* ls_src_seg_t's `seen`: the finite check of the bytes just read, while the disk reads on
 * (pieces of whole elements; any other piece leaves `shown` short: checked afterwards) */
static void check_seen(void *ctx, const void *p, uint64_t at, uint64_t len) {
  want_t *w = ctx;
  const uint64_t es = ls_dtype_size(w->t->dtype);
  if (at % es || len % es || at != w->shown) {
    w->shown = UINT64_MAX; /* never equal to nbytes again */
    return;
  }
  if (w->bad == UINT64_MAX) {
    const uint64_t b = first_nonfinite(w->t, p, len / es);
    if (b != UINT64_MAX) w->bad = at / es + b;
  }
  w->shown += len;
}

static int cmp_want(const void *a, const void *b) {
  const want_t *x = a, *y = b;
  if (x->t->file != y->t->file) return x->t->file < y->t->file ? -1 : 1;
  return x->t->offset < y->t->offset ? -1 : x->t->offset > y->t->offset;
}

/* Read wants w[0..n) (sorted by file and offset) as few spans: segments of consecutive
 * tensors, gaps of at most gap_max dropped; one batch per file. */
static int read_wants(ls_model_t *m, want_t *w, int n, uint64_t gap_max, ls_src_seg_t *segs,
                      ls_src_span_t *spans) {
  int ns = 0, np = 0, first = 0;
  for (int i = 0; i < n; i++) {
    const ls_st_tensor_t *t = w[i].t;
    const ls_src_span_t *cur = np > 0 ? &spans[np - 1] : NULL;
    const uint64_t end = cur ? cur->off + cur->len : 0;
    const int join = cur && i > first && t->file == w[i - 1].t->file && t->offset >= end &&
                     t->offset - end <= gap_max;
    if (!join) {
      if (np > 0 && t->file != w[i - 1].t->file) { /* the previous file's batch */
        if (ls_st_read_spans(&m->st, w[i - 1].t->file, spans, np)) return LS_ERR;
        np = ns = 0;
        first = i;
      }
      spans[np++] = (ls_src_span_t){t->offset, 0, &segs[ns], 0};
    } else if (t->offset > end) {
      segs[ns++] = (ls_src_seg_t){end, t->offset - end, NULL, NULL, NULL};
      spans[np - 1].n_segs++;
      spans[np - 1].len += t->offset - end;
    }
    segs[ns++] = (ls_src_seg_t){t->offset, t->nbytes, w[i].dst, w[i].home ? check_seen : NULL,
                                w[i].home};
    spans[np - 1].n_segs++;
    spans[np - 1].len += t->nbytes;
  }
  return np > 0 ? ls_st_read_spans(&m->st, w[n - 1].t->file, spans, np) : LS_OK;
}

int ls_model_read_layer(ls_model_t *m, int layer, void *dst) {
  char *fused = NULL;       /* the last stored tensor read whole for views */
  const ls_st_tensor_t *held = NULL;
  int rc = LS_OK;
  /* the tensors read as they are stored (and FP8 scales): coalesced spans */
  const int cap = 2 * m->n_slots + 1;
  if (m->rd_cap < cap) {
    free(m->rd_segs);
    free(m->rd_spans);
    free(m->rd_wants);
    m->rd_segs = ls_malloc(sizeof *m->rd_segs * (size_t)(2 * cap), "layer reads");
    m->rd_spans = ls_malloc(sizeof *m->rd_spans * (size_t)cap, "layer reads");
    m->rd_wants = ls_malloc(sizeof(want_t) * (size_t)(2 * cap), "layer reads");
    m->rd_cap = m->rd_segs && m->rd_spans && m->rd_wants ? cap : 0;
    if (!m->rd_cap) return LS_ERR;
  }
  want_t *w = m->rd_wants, *order = w + cap;
  int nw = 0;
  for (int i = 0; i < m->n_slots; i++) {
    const ls_wslot_t *s = ls_model_slot(m, layer, i);
    if (!s->spec.present || s->spec.transpose || s->spec.view_count != 0) continue;
    const ls_st_tensor_t *t = ls_st_find(&m->st, s->spec.name);
    if (!t) return LS_ERR;
    w[nw] = (want_t){t, (char *)dst + s->offset, &w[nw], 0, UINT64_MAX};
    nw++;
    if (s->scale_rows > 0) { /* FP8: its block scales */
      char name[LS_WNAME_MAX + 16];
      snprintf(name, sizeof name, "%s_scale_inv", s->spec.name);
      const ls_st_tensor_t *sc = ls_st_find(&m->st, name);
      if (!sc) return LS_ERR;
      w[nw] = (want_t){sc, (char *)dst + s->scale_offset, &w[nw], 0, UINT64_MAX};
      nw++;
    }
  }
  memcpy(order, w, sizeof *w * (size_t)nw);
  if (nw > 1) qsort(order, (size_t)nw, sizeof *order, cmp_want);
  if (read_wants(m, order, nw, GAP_MAX, m->rd_segs, m->rd_spans)) return LS_ERR;
  for (int i = 0; i < nw; i++) { /* in table order: the first bad tensor is named */
    const ls_st_tensor_t *t = w[i].t;
    if (w[i].shown == t->nbytes) { /* checked while it was read */
      if (w[i].bad != UINT64_MAX) return report_nonfinite(m, t, w[i].bad);
    } else if (check_finite(m, t, w[i].dst, (uint64_t)t->numel, 0)) {
      return LS_ERR;
    }
  }
  for (int i = 0; i < m->n_slots && rc == LS_OK; i++) {
    const ls_wslot_t *s = ls_model_slot(m, layer, i);
    if (!s->spec.present || (!s->spec.transpose && s->spec.view_count == 0)) continue;
    const ls_st_tensor_t *t = ls_st_find(&m->st, s->spec.name);
    if (!t) return LS_ERR;
    char *out = (char *)dst + s->offset;
    if (t != held) { /* the slots of one fused tensor are consecutive: read it once */
      free(fused);
      held = NULL;
      fused = ls_malloc((size_t)t->numel * ls_dtype_size(t->dtype), "fused tensor");
      if (!fused || ls_st_read(&m->st, t, fused) ||
          check_finite(m, t, fused, (uint64_t)t->numel, 0)) {
        rc = LS_ERR;
        break;
      }
      held = t;
    }
    take_view(&s->spec, fused, ls_dtype_size(t->dtype), out);
  }
  free(fused);
  return rc;
}

int ls_model_read_rows(ls_model_t *m, int g, const int32_t *ids, int64_t n, void *dst) {
  const ls_st_tensor_t *t = ls_st_find(&m->st, m->glob[g].spec.name);
  const uint64_t row = (uint64_t)m->cfg.hidden * ls_dtype_size(t->dtype);
  /* runs of consecutive ids are one segment each; over HTTP, runs a few rows apart share
   * one range (the rows between are dropped), and the ranges go out in one batch */
  const uint64_t gap_rows = m->st.remote ? (((uint64_t)64 << 10) + row - 1) / row : 0;
  int64_t n_runs = 0;
  for (int64_t i = 0; i < n; i++)
    if (i == 0 || ids[i] != ids[i - 1] + 1) n_runs++;
  ls_src_seg_t *segs = ls_malloc(sizeof *segs * (size_t)(2 * n_runs + 1), "embedding reads");
  ls_src_span_t *spans = ls_malloc(sizeof *spans * (size_t)(n_runs + 1), "embedding reads");
  int64_t *run0 = ls_malloc(sizeof *run0 * (size_t)(n_runs + 1), "embedding reads");
  int rc = segs && spans && run0 ? LS_OK : LS_ERR;
  int np = 0, ns = 0, nr = 0;
  for (int64_t i = 0; i < n && rc == LS_OK;) {
    int64_t j = i + 1;
    while (j < n && ids[j] == ids[j - 1] + 1) j++;
    const uint64_t off = t->offset + (uint64_t)ids[i] * row, len = (uint64_t)(j - i) * row;
    const uint64_t end = np > 0 ? spans[np - 1].off + spans[np - 1].len : 0;
    if (np > 0 && off >= end && (off - end) / row <= gap_rows && gap_rows > 0) {
      if (off > end) {
        segs[ns++] = (ls_src_seg_t){end, off - end, NULL, NULL, NULL};
        spans[np - 1].n_segs++;
        spans[np - 1].len += off - end;
      }
    } else {
      spans[np++] = (ls_src_span_t){off, 0, &segs[ns], 0};
    }
    segs[ns++] = (ls_src_seg_t){off, len, (char *)dst + (uint64_t)i * row, NULL, NULL};
    spans[np - 1].n_segs++;
    spans[np - 1].len += len;
    run0[nr++] = i;
    i = j;
  }
  if (rc == LS_OK && np > 0) rc = ls_st_read_spans(&m->st, t->file, spans, np);
  for (int r = 0; r < nr && rc == LS_OK; r++) {
    const int64_t i = run0[r], j = r + 1 < nr ? run0[r + 1] : n;
    char *rows = (char *)dst + (uint64_t)i * row;
    rc = check_finite(m, t, rows, (uint64_t)(j - i) * (uint64_t)m->cfg.hidden,
                      (uint64_t)ids[i] * (uint64_t)m->cfg.hidden);
  }
  free(segs);
  free(spans);
  free(run0);
  return rc;
}

int ls_model_read_global(ls_model_t *m, int g, void *dst) {
  const ls_st_tensor_t *t = ls_st_find(&m->st, m->glob[g].spec.name);
  if (ls_st_read(&m->st, t, dst)) return LS_ERR;
  return check_finite(m, t, dst, (uint64_t)t->numel, 0);
}

uint64_t ls_model_fingerprint(ls_model_t *m, MPI_Comm comm) {
  uint64_t h = LS_FNV_INIT;
  if (m->is_root) {
    h = ls_fnv1a(h, m->config_json, strlen(m->config_json));
    h = ls_fnv1a(h, m->slots, sizeof *m->slots * (size_t)m->cfg.n_layers * (size_t)m->n_slots);
    for (int i = 0; i < m->st.n_files; i++) {
      const ls_st_file_t *f = &m->st.files[i];
      h = ls_fnv1a(h, f->name, strlen(f->name) + 1);
      h = ls_fnv1a(h, &f->size, sizeof f->size);
      h = ls_fnv1a(h, f->header, (size_t)f->header_len);
      /* a remote file: the server's ETag too (a changed file with the same header) */
      if (m->st.remote) h = ls_fnv1a(h, f->src.etag, strlen(f->src.etag));
    }
  }
  MPI_Bcast(&h, 1, MPI_UINT64_T, 0, comm);
  return h;
}
