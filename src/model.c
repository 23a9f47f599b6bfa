/* model.c: model description, tensor validation and raw reads (see model.h). */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "ls_common.h"
#include <unistd.h>

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

static int validate_root(ls_model_t *m, const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/config.json", dir);
  size_t len;
  char *text = ls_read_text_file(path, sizeof m->config_json - 1, &len);
  if (!text) return LS_ERR;
  memcpy(m->config_json, text, len + 1);
  int rc = ls_config_parse(text, path, &m->cfg);
  free(text);
  if (rc) return LS_ERR;
  if (ls_st_open_dir(dir, &m->st)) return LS_ERR;
  const ls_config_t *c = &m->cfg;
  int64_t shape[2] = {c->vocab, c->hidden};
  const ls_st_tensor_t *t = expect_tensor(m, "model.embed_tokens.weight", shape, 2);
  if (!t) return LS_ERR;
  m->embed_dtype = t->dtype;
  shape[0] = c->hidden;
  if (!(t = expect_tensor(m, "model.norm.weight", shape, 1))) return LS_ERR;
  m->norm_dtype = t->dtype;
  m->total_tensor_bytes = t->nbytes;
  for (int L = 0; L < c->n_layers; L++) {
    uint64_t off = 0;
    for (int id = 0; id < LS_W_COUNT; id++) {
      char name[LS_ST_MAX_NAME];
      int ndim;
      ls_wslot_t *s = &m->slots[(size_t)L * LS_W_COUNT + id];
      memset(s, 0, sizeof *s);
      if (!ls_weight_spec(c, L, id, name, sizeof name, shape, &ndim)) continue;
      if (!(t = expect_tensor(m, name, shape, ndim))) return LS_ERR;
      s->present = 1;
      s->dtype = t->dtype;
      s->numel = t->numel;
      s->offset = off;
      off += (t->nbytes + 63) / 64 * 64;
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
  int ok = 1;
  if (m->is_root) {
    /* slots are sized after the config is known */
    ls_config_t probe;
    ok = ls_config_load(dir, &probe) == LS_OK;
    if (ok) {
      m->slots = ls_calloc((size_t)probe.n_layers * LS_W_COUNT, sizeof *m->slots, "layer table");
      m->layer_bytes = ls_calloc((size_t)probe.n_layers, sizeof *m->layer_bytes, "layer table");
      ok = m->slots && m->layer_bytes && validate_root(m, dir) == LS_OK;
    }
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, comm);
  if (!ok) {
    ls_model_close(m);
    return LS_ERR;
  }
  /* fixed-size part of the description, then the tables */
  MPI_Bcast(&m->cfg, sizeof m->cfg, MPI_BYTE, 0, comm);
  MPI_Bcast(m->config_json, sizeof m->config_json, MPI_BYTE, 0, comm);
  int64_t scalars[4] = {(int64_t)m->max_layer_bytes, m->embed_dtype, m->norm_dtype,
                        (int64_t)m->total_tensor_bytes};
  MPI_Bcast(scalars, 4, MPI_INT64_T, 0, comm);
  m->max_layer_bytes = (uint64_t)scalars[0];
  m->embed_dtype = (int32_t)scalars[1];
  m->norm_dtype = (int32_t)scalars[2];
  m->total_tensor_bytes = (uint64_t)scalars[3];
  const int nl = m->cfg.n_layers;
  if (!m->is_root) {
    m->slots = ls_calloc((size_t)nl * LS_W_COUNT, sizeof *m->slots, "layer table");
    m->layer_bytes = ls_calloc((size_t)nl, sizeof *m->layer_bytes, "layer table");
    if (!m->slots || !m->layer_bytes) MPI_Abort(comm, 1);
  }
  MPI_Bcast(m->slots, (int)(sizeof *m->slots * (size_t)nl * LS_W_COUNT), MPI_BYTE, 0, comm);
  MPI_Bcast(m->layer_bytes, nl, MPI_UINT64_T, 0, comm);
  return LS_OK;
}

void ls_model_close(ls_model_t *m) {
  if (m->is_root) ls_st_close(&m->st);
  free(m->slots);
  free(m->layer_bytes);
  m->slots = NULL;
  m->layer_bytes = NULL;
}

/* ---- raw reads (rank 0) -------------------------------------------------------------------- */
/* NaN or Inf in a weight poisons every activation after it: refuse the checkpoint,
 * naming the tensor (element index counted from first_elem). */
static int check_finite(const ls_model_t *m, const ls_st_tensor_t *t, const void *raw,
                        uint64_t n, uint64_t first_elem) {
  uint64_t bad = UINT64_MAX;
  if (t->dtype == LS_DT_F32) {
    const uint32_t *v = raw;
    for (uint64_t i = 0; i < n && bad == UINT64_MAX; i++)
      if ((v[i] & 0x7f800000u) == 0x7f800000u) bad = i;
  } else {
    const uint16_t *v = raw;
    const uint16_t exp = t->dtype == LS_DT_BF16 ? 0x7f80u : 0x7c00u;
    for (uint64_t i = 0; i < n && bad == UINT64_MAX; i++)
      if ((v[i] & exp) == exp) bad = i;
  }
  if (bad == UINT64_MAX) return LS_OK;
  ls_error("%s: tensor %s has a NaN or Inf value (element %llu); the checkpoint is corrupt: "
           "re-download or re-convert it", m->st.files[t->file].path, t->name,
           (unsigned long long)(first_elem + bad));
  return LS_ERR;
}

int ls_model_read_layer(ls_model_t *m, int layer, void *dst) {
  for (int id = 0; id < LS_W_COUNT; id++) {
    const ls_wslot_t *s = &m->slots[(size_t)layer * LS_W_COUNT + id];
    if (!s->present) continue;
    char name[LS_ST_MAX_NAME];
    int64_t shape[2];
    int ndim;
    ls_weight_spec(&m->cfg, layer, id, name, sizeof name, shape, &ndim);
    const ls_st_tensor_t *t = ls_st_find(&m->st, name);
    if (!t || ls_st_read(&m->st, t, (char *)dst + s->offset)) return LS_ERR;
    if (check_finite(m, t, (char *)dst + s->offset, (uint64_t)t->numel, 0)) return LS_ERR;
  }
  return LS_OK;
}

int ls_model_read_embed_rows(ls_model_t *m, const int32_t *ids, int64_t n, void *dst) {
  const ls_st_tensor_t *t = ls_st_find(&m->st, "model.embed_tokens.weight");
  const uint64_t row = (uint64_t)m->cfg.hidden * ls_dtype_size(t->dtype);
  /* coalesce runs of consecutive ids into one pread */
  for (int64_t i = 0; i < n;) {
    int64_t j = i + 1;
    while (j < n && ids[j] == ids[j - 1] + 1) j++;
    char *rows = (char *)dst + (uint64_t)i * row;
    if (ls_st_read_range(&m->st, t, (uint64_t)ids[i] * row, (uint64_t)(j - i) * row, rows) ||
        check_finite(m, t, rows, (uint64_t)(j - i) * (uint64_t)m->cfg.hidden,
                     (uint64_t)ids[i] * (uint64_t)m->cfg.hidden))
      return LS_ERR;
    i = j;
  }
  return LS_OK;
}

int ls_model_read_final_norm(ls_model_t *m, void *dst) {
  const ls_st_tensor_t *t = ls_st_find(&m->st, "model.norm.weight");
  if (ls_st_read(&m->st, t, dst)) return LS_ERR;
  return check_finite(m, t, dst, (uint64_t)t->numel, 0);
}

uint64_t ls_model_fingerprint(ls_model_t *m, MPI_Comm comm) {
  uint64_t h = LS_FNV_INIT;
  if (m->is_root) {
    h = ls_fnv1a(h, m->config_json, strlen(m->config_json));
    for (int i = 0; i < m->st.n_files; i++) {
      const ls_st_file_t *f = &m->st.files[i];
      h = ls_fnv1a(h, f->name, strlen(f->name) + 1);
      h = ls_fnv1a(h, &f->size, sizeof f->size);
      char buf[65536];
      for (uint64_t off = 0; off < f->header_len;) {
        size_t n = f->header_len - off < sizeof buf ? (size_t)(f->header_len - off) : sizeof buf;
        ssize_t r = pread(f->fd, buf, n, (off_t)off);
        if (r <= 0) break;
        h = ls_fnv1a(h, buf, (size_t)r);
        off += (uint64_t)r;
      }
    }
  }
  MPI_Bcast(&h, 1, MPI_UINT64_T, 0, comm);
  return h;
}
