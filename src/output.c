/* output.c: the sweep's HDF5 file: creation (every dataset, coordinate / dimension scale
 * and marker up front, so a killed run's metadata stays as last flushed), per-layer
 * writes (collective HDF5, or the writer thread's pwrite at each dataset's raw offset
 * while the next layer computes), --out-dtype rounding, the profile, and the checks a
 * resumed run makes on an existing file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "sweep_internal.h"

/* ---- output file ---------------------------------------------------------------------------------- */
const char *ls_sw_profile_fields[7] = {"read_s", "read_wait_s", "bcast_wait_s", "load_s",
                                        "forward_s", "hooks_s", "write_s"};

int ls_sw_write_str_attr(sweep_t *s, const char *name, const char *v) {
  return ls_h5out_attr_str(&s->out.h5, "/", name, v);
}

/* A coordinate dataset /name (int64) whose rows [start, start + count) this rank
 * writes as start + i (or values[i] when given), made a dimension scale and attached
 * to the listed datasets' axes. */
static int coordinate(sweep_t *s, const char *name, hsize_t n, hsize_t start, hsize_t count,
                      const int64_t *values, const char *const *dsets, const int *idx) {
  char path[64];
  snprintf(path, sizeof path, "/%s", name);
  int64_t *v = ls_malloc(sizeof(int64_t) * (size_t)(count + 1), "coordinates");
  if (!v) return LS_ERR;
  for (hsize_t i = 0; i < count; i++) v[i] = values ? values[i] : (int64_t)(start + i);
  int rc = ls_h5out_create_dataset(&s->out.h5, path, H5T_STD_I64LE, 1, &n);
  if (rc == LS_OK) rc = ls_h5out_write(&s->out.h5, path, H5T_NATIVE_INT64, 1, &start, &count, v);
  free(v);
  if (rc == LS_OK) rc = ls_h5out_dim_scale(&s->out.h5, path, name, dsets, idx);
  return rc;
}

/* Named dimensions, so that xarray (h5netcdf) and netCDF tools see "layer", "sample" or
 * "token", "hidden" instead of phony_dim_N: coordinate datasets at the root, made HDF5
 * dimension scales and attached to every dataset's axes (README "Output file"). */
static int dimension_scales(sweep_t *s) {
  const ls_shard_t *sh = &s->sh;
  const int raw = s->sel.pool == LS_POOL_NONE, root = s->rank == 0;
  const char *acts[LS_HOOK_COUNT + 1];
  int ax_layer[LS_HOOK_COUNT + 1], ax_row[LS_HOOK_COUNT + 1], ax_hidden[LS_HOOK_COUNT + 1];
  char names[LS_HOOK_COUNT][64];
  int n = 0, nl = 0;
  const char *layered[LS_HOOK_COUNT + 1];
  for (int h = 0; h < LS_HOOK_COUNT && !s->o->no_store; h++) {
    if (!((s->sel.hooks >> h) & 1) || h == LS_HOOK_ROUTER_LOGITS) continue; /* own axes */
    snprintf(names[n], sizeof names[n], "/%s", ls_hook_name(h));
    const int per_layer = h != LS_HOOK_FINAL_NORM;
    acts[n] = names[n];
    ax_row[n] = per_layer ? 1 : 0;
    ax_hidden[n] = per_layer ? 2 : 1;
    if (per_layer) {
      layered[nl] = names[n];
      ax_layer[nl++] = 0;
    }
    n++;
  }
  acts[n] = NULL;
  layered[nl] = NULL;
  /* the row axis: the hidden-wide hooks and router_logits (which has its own layer axis,
   * the selected MoE layers, and an expert axis) */
  const int router = (s->sel.hooks >> LS_HOOK_ROUTER_LOGITS) & 1 && !s->o->no_store;
  const char *rows[LS_HOOK_COUNT + 1];
  for (int i = 0; i <= n; i++) rows[i] = acts[i];
  if (router) {
    rows[n] = "/router_logits";
    ax_row[n] = 1;
    rows[n + 1] = NULL;
  }
  int64_t *sel = ls_malloc(sizeof(int64_t) * (size_t)(s->sel.n_sel + 1), "layers");
  if (!sel) return LS_ERR;
  for (int i = 0; i < s->sel.n_sel; i++) sel[i] = s->sel.layers[i];
  const hsize_t H = (hsize_t)s->cfg->hidden, N = (hsize_t)s->data.n;
  int rc = coordinate(s, "layer", (hsize_t)s->sel.n_sel, 0, root ? (hsize_t)s->sel.n_sel : 0,
                      sel, layered, ax_layer);
  free(sel);
  /* --project: the activations' last axis is the directions', not hidden */
  const char *none[1] = {NULL};
  if (rc == LS_OK)
    rc = coordinate(s, "hidden", H, 0, root ? H : 0, NULL, s->proj.K ? none : acts, ax_hidden);
  if (rc == LS_OK && s->proj.K)
    rc = coordinate(s, "direction", (hsize_t)s->proj.K, 0, root ? (hsize_t)s->proj.K : 0, NULL,
                    acts, ax_hidden);
  if (rc == LS_OK && (s->sel.hooks >> LS_HOOK_ROUTER_LOGITS) & 1) {
    const char *rl[2] = {router ? "/router_logits" : NULL, NULL};
    int z[1] = {0}, two[1] = {2};
    int64_t *ml = ls_malloc(sizeof(int64_t) * (size_t)(s->sel.n_moe_sel + 1), "layers");
    if (!ml) return LS_ERR;
    for (int i = 0; i < s->sel.n_moe_sel; i++) ml[i] = s->sel.moe_layers[i];
    const hsize_t nm = (hsize_t)s->sel.n_moe_sel, E = (hsize_t)s->cfg->n_experts;
    rc = coordinate(s, "moe_layer", nm, 0, root ? nm : 0, ml, rl, z);
    free(ml);
    if (rc == LS_OK) rc = coordinate(s, "expert", E, 0, root ? E : 0, NULL, rl, two);
  }
  /* the activations' row axis: prompts (pooled) or tokens (--pool none) */
  if (rc == LS_OK)
    rc = raw ? coordinate(s, "token", (hsize_t)sh->n_out_rows, (hsize_t)sh->out_row0,
                          (hsize_t)sh->out_rows, NULL, rows, ax_row)
             : coordinate(s, "sample", N, (hsize_t)sh->p0, (hsize_t)sh->n_prompts, NULL, rows,
                          ax_row);
  /* /samples on the sample axis (offsets, N + 1 of them, on their own) */
  const char *smp[5];
  int zero[5] = {0, 0, 0, 0, 0}, k = 0;
  smp[k++] = "/samples/length";
  if (s->data.has_label) smp[k++] = "/samples/label";
  if (s->data.has_id) smp[k++] = "/samples/id";
  smp[k] = NULL;
  if (rc == LS_OK && raw)
    rc = coordinate(s, "sample", N, (hsize_t)sh->p0, (hsize_t)sh->n_prompts, NULL, smp, zero);
  else if (rc == LS_OK)
    rc = ls_h5out_dim_scale(&s->out.h5, "/sample", "sample", smp, zero);
  if (rc == LS_OK && raw) {
    const char *off[2] = {"/samples/offsets", NULL};
    hsize_t cnt = (hsize_t)sh->n_prompts + (s->rank == s->size - 1 ? 1 : 0);
    rc = coordinate(s, "sample_edge", N + 1, (hsize_t)sh->p0, cnt, NULL, off, zero);
  }
  /* /profile: [rank, layer_computed] */
  const char *prof[9];
  int p0[9], p1[9], np = 0;
  char pnames[7][64];
  for (int i = 0; i < 7; i++) {
    snprintf(pnames[i], sizeof pnames[i], "/profile/%s", ls_sw_profile_fields[i]);
    prof[np] = pnames[i];
    p0[np] = 0;
    p1[np++] = 1;
  }
  prof[np] = NULL;
  const char *lb[2] = {"/profile/layer_bytes", NULL};
  if (rc == LS_OK)
    rc = coordinate(s, "rank", (hsize_t)s->size, (hsize_t)s->rank, 1, NULL, prof, p0);
  if (rc == LS_OK)
    rc = coordinate(s, "layer_computed", (hsize_t)s->sel.n_run, 0, root ? (hsize_t)s->sel.n_run : 0,
                    NULL, prof, p1);
  if (rc == LS_OK) rc = ls_h5out_dim_scale(&s->out.h5, "/layer_computed", "layer_computed", lb, zero);
  return rc;
}

/* --compress: chunks of one layer x the rows that make about 1 MiB (at least one row, at
 * most all), the whole width: how activations are read (a layer, a block of samples) */
static void chunk_dims(const sweep_t *s, const hsize_t *dims, int rank, size_t elem,
                       hsize_t *chunk) {
  (void)s;
  const hsize_t width = dims[rank - 1], rows = dims[rank - 2];
  hsize_t r = (hsize_t)((1u << 20) / (elem * (width > 0 ? width : 1)));
  r = r < 1 ? 1 : r > rows ? rows : r;
  for (int i = 0; i < rank; i++) chunk[i] = 1;
  chunk[rank - 2] = r > 0 ? r : 1;
  chunk[rank - 1] = width > 0 ? width : 1;
}

int ls_sw_create_output(sweep_t *s) {
  const ls_dataset_t *d = &s->data;
  const hsize_t H = (hsize_t)s->cfg->hidden;
  /* --resume without a usable checkpoint overwrites a partial file (a complete one
   * never reaches here) */
  if (ls_h5out_create(&s->out.h5, s->o->out_path, s->comm, s->o->force || s->o->resume))
    return LS_ERR;
  s->out.open = 1;
  char hooks[256] = "";
  for (int h = 0; h < LS_HOOK_COUNT; h++)
    if ((s->sel.hooks >> h) & 1)
      snprintf(hooks + strlen(hooks), sizeof hooks - strlen(hooks), "%s%s", hooks[0] ? "," : "",
               ls_hook_name(h));
  int rc = LS_OK;
  rc |= ls_h5out_attr_str_sized(&s->out.h5, "/", "status", "partial", 16);
  rc |= ls_sw_write_str_attr(s, "format_version", FORMAT_VERSION);
  rc |= ls_sw_write_str_attr(s, "layersweep_version", LS_VERSION);
  rc |= ls_sw_write_str_attr(s, "model_path", s->o->model_dir);
  /* where the bytes came from: local, http (a URL) or hub (a hub id); never a token */
  rc |= ls_sw_write_str_attr(s, "model_source", s->model.source);
  rc |= ls_sw_write_str_attr(s, "model_location", s->model.location);
  if (s->model.hub_id[0]) {
    rc |= ls_sw_write_str_attr(s, "model_hub_id", s->model.hub_id);
    rc |= ls_sw_write_str_attr(s, "model_revision", s->model.revision);
  }
  rc |= ls_sw_write_str_attr(s, "model_config", s->model.config_json);
  rc |= ls_sw_write_str_attr(s, "model_architecture", s->cfg->arch_name);
  rc |= ls_sw_write_str_attr(s, "data_path", s->o->data_path);
  rc |= ls_sw_write_str_attr(s, "compute_dtype", s->be->compute_dtype);
  rc |= ls_sw_write_str_attr(s, "backend", s->be->iface->name);
  rc |= ls_sw_write_str_attr(s, "pool", ls_pool_name(s->sel.pool));
  rc |= ls_sw_write_str_attr(s, "out_dtype", s->o->out_dtype ? s->o->out_dtype : "float32");
  int64_t level = s->o->compress;
  rc |= ls_h5out_attr_i64(&s->out.h5, "/", "compress", &level, 1);
  rc |= ls_sw_write_str_attr(s, "steer", s->steer.canon ? s->steer.canon : "[]");
  if (rc == LS_OK && s->steer.n > 0) { /* the edits' vectors (unit for ablate), rank 0 */
    const size_t W = (size_t)s->cfg->hidden;
    float *v = ls_malloc(sizeof(float) * W * (size_t)s->steer.n, "steering");
    if (!v) return LS_ERR;
    for (int k = 0; k < s->steer.n; k++) memcpy(v + (size_t)k * W, s->steer.e[k].v, sizeof(float) * W);
    hsize_t dims[2] = {(hsize_t)s->steer.n, (hsize_t)W}, start[2] = {0, 0};
    hsize_t count[2] = {s->rank == 0 ? dims[0] : 0, s->rank == 0 ? dims[1] : 0};
    rc = ls_h5out_create_dataset(&s->out.h5, "/steer/vectors", H5T_IEEE_F32LE, 2, dims);
    if (rc == LS_OK) rc = ls_h5out_write(&s->out.h5, "/steer/vectors", H5T_NATIVE_FLOAT, 2, start, count, v);
    free(v);
  }
  rc |= ls_sw_write_str_attr(s, "hooks", hooks);
  int64_t stored = !s->o->no_store;
  rc |= ls_h5out_attr_i64(&s->out.h5, "/", "activations_stored", &stored, 1);
  rc |= ls_sw_write_str_attr(s, "project", s->proj.K ? s->proj.canon : "");
  if (rc == LS_OK && s->proj.K) { /* the directions used, float64 as read */
    const hsize_t K = (hsize_t)s->proj.K, n = (hsize_t)s->proj.n_sets;
    hsize_t dims[3] = {n, K, H}, start[3] = {0, 0, 0};
    hsize_t count[3] = {s->rank == 0 ? n : 0, s->rank == 0 ? K : 0, s->rank == 0 ? H : 0};
    const int nd = s->proj.per_layer ? 3 : 2;
    rc = ls_h5out_create_dataset(&s->out.h5, "/project/directions", H5T_IEEE_F64LE, nd,
                                 nd == 3 ? dims : dims + 1);
    if (rc == LS_OK)
      rc = ls_h5out_write(&s->out.h5, "/project/directions", H5T_NATIVE_DOUBLE, nd,
                          nd == 3 ? start : start + 1, nd == 3 ? count : count + 1, s->proj.dirs);
  }
  rc |= ls_sw_write_str_attr(s, "command", s->o->command ? s->o->command : "");
  int64_t nranks = s->size;
  rc |= ls_h5out_attr_i64(&s->out.h5, "/", "n_ranks", &nranks, 1);
  rc |= ls_h5out_attr_i64(&s->out.h5, "/", "layers_completed", s->out.done_marks, s->sel.n_sel);
  if (rc) return LS_ERR;
  /* every dataset is created now, so that later writes touch raw data and fixed-size
   * attributes only: a killed run leaves the file's metadata as last flushed */
  for (size_t i = 0; i < sizeof ls_sw_profile_fields / sizeof ls_sw_profile_fields[0] && rc == LS_OK; i++) {
    char name[64];
    snprintf(name, sizeof name, "/profile/%s", ls_sw_profile_fields[i]);
    hsize_t dims[2] = {(hsize_t)s->size, (hsize_t)s->sel.n_run};
    rc = ls_h5out_create_dataset(&s->out.h5, name, H5T_IEEE_F64LE, 2, dims);
  }
  hsize_t nrun = (hsize_t)s->sel.n_run;
  if (rc == LS_OK) rc = ls_h5out_create_dataset(&s->out.h5, "/profile/layer_bytes", H5T_IEEE_F64LE, 1, &nrun);
  if (rc) return LS_ERR;
  int64_t *sel = ls_malloc(sizeof(int64_t) * (size_t)(s->sel.n_sel + 1), "layers");
  if (!sel) return LS_ERR;
  for (int i = 0; i < s->sel.n_sel; i++) sel[i] = s->sel.layers[i];
  const hid_t ftype = ls_h5out_float_type(s->out.out_dt); /* --out-dtype */
  for (int h = 0; h < LS_HOOK_COUNT && rc == LS_OK && !s->o->no_store; h++) {
    if (!((s->sel.hooks >> h) & 1) || !ls_hook_layered(h)) continue;
    char name[64];
    snprintf(name, sizeof name, "/%s", ls_hook_name(h));
    const int router = h == LS_HOOK_ROUTER_LOGITS;
    hsize_t dims[3] = {(hsize_t)ls_sw_hook_layers(s, h), (hsize_t)s->sh.n_out_rows,
                       (hsize_t)ls_sw_store_width(s, h)};
    /* router_logits: float32 whatever --out-dtype (logits are small and compared) */
    hid_t t = router ? H5Tcopy(H5T_IEEE_F32LE) : H5Tcopy(ftype);
    hsize_t chunk[3];
    chunk_dims(s, dims, 3, H5Tget_size(t), chunk);
    rc = ls_h5out_create_dataset_chunked(&s->out.h5, name, t, 3, dims,
                                         s->o->compress ? chunk : NULL, s->o->compress);
    H5Tclose(t);
    if (router) {
      for (int i = 0; i < s->sel.n_moe_sel; i++) sel[i] = s->sel.moe_layers[i];
      if (!rc) rc = ls_h5out_attr_i64(&s->out.h5, name, "layers", sel, s->sel.n_moe_sel);
      for (int i = 0; i < s->sel.n_sel; i++) sel[i] = s->sel.layers[i];
    } else if (!rc) {
      rc = ls_h5out_attr_i64(&s->out.h5, name, "layers", sel, s->sel.n_sel);
    }
  }
  free(sel);
  /* /router_stats/expert_rows [moe layers computed, n_experts]: the real rows routed to
   * each expert, summed over ranks (the load imbalance that bounds expert GEMMs) */
  if (rc == LS_OK && s->cfg->n_experts > 0 && s->sel.n_run > 0) {
    int64_t *ml = ls_malloc(sizeof(int64_t) * (size_t)(s->sel.n_run + 1), "layers");
    if (!ml) { H5Tclose(ftype); return LS_ERR; }
    int nm = 0;
    for (int L = 0; L < s->sel.n_run; L++)
      if (ls_config_is_moe(s->cfg, L)) ml[nm++] = L;
    hsize_t dims[2] = {(hsize_t)nm, (hsize_t)s->cfg->n_experts};
    if (nm > 0) {
      rc = ls_h5out_create_dataset(&s->out.h5, "/router_stats/expert_rows", H5T_STD_I64LE, 2, dims);
      if (!rc) rc = ls_h5out_attr_i64(&s->out.h5, "/router_stats/expert_rows", "layers", ml, nm);
    }
    free(ml);
  }
  if (rc == LS_OK && ((s->sel.hooks >> LS_HOOK_FINAL_NORM) & 1) && !s->o->no_store) {
    hsize_t dims[2] = {(hsize_t)s->sh.n_out_rows, (hsize_t)ls_sw_store_width(s, LS_HOOK_FINAL_NORM)},
            chunk[2];
    chunk_dims(s, dims, 2, H5Tget_size(ftype), chunk);
    rc = ls_h5out_create_dataset_chunked(&s->out.h5, "/final_norm", ftype, 2, dims,
                                         s->o->compress ? chunk : NULL, s->o->compress);
  }
  H5Tclose(ftype);
  if (rc) return LS_ERR;

  /* /samples: each rank writes its own prompts */
  hsize_t N = (hsize_t)d->n, start = (hsize_t)s->sh.p0, count = (hsize_t)s->sh.n_prompts;
  int64_t *len = ls_malloc(sizeof(int64_t) * (size_t)(s->sh.n_prompts + 1), "samples");
  if (!len) return LS_ERR;
  for (int64_t i = 0; i < s->sh.n_prompts; i++) len[i] = ls_dataset_len(d, s->sh.p0 + i);
  rc = ls_h5out_create_dataset(&s->out.h5, "/samples/length", H5T_STD_I64LE, 1, &N);
  rc |= ls_h5out_write(&s->out.h5, "/samples/length", H5T_NATIVE_INT64, 1, &start, &count, len);
  free(len);
  if (rc == LS_OK && s->sel.pool == LS_POOL_NONE) {
    hsize_t n1 = N + 1, cnt = count + (s->rank == s->size - 1 ? 1 : 0);
    rc = ls_h5out_create_dataset(&s->out.h5, "/samples/offsets", H5T_STD_I64LE, 1, &n1);
    rc |= ls_h5out_write(&s->out.h5, "/samples/offsets", H5T_NATIVE_INT64, 1, &start, &cnt,
                         d->offsets + s->sh.p0);
  }
  if (rc == LS_OK && d->has_label) {
    rc = ls_h5out_create_dataset(&s->out.h5, "/samples/label", H5T_STD_I64LE, 1, &N);
    rc |= ls_h5out_write(&s->out.h5, "/samples/label", H5T_NATIVE_INT64, 1, &start, &count,
                         d->labels + s->sh.p0);
  }
  if (rc == LS_OK && d->has_id) {
    size_t width = 1;
    for (int64_t i = 0; i < d->n; i++) {
      size_t l = strlen(d->ids + (size_t)i * LS_DATASET_MAX_ID) + 1;
      width = l > width ? l : width;
    }
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, width);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    H5Tset_cset(t, H5T_CSET_UTF8);
    char *buf = ls_calloc((size_t)(s->sh.n_prompts + 1), width, "ids");
    if (!buf) { H5Tclose(t); return LS_ERR; }
    for (int64_t i = 0; i < s->sh.n_prompts; i++)
      memcpy(buf + (size_t)i * width, d->ids + (size_t)(s->sh.p0 + i) * LS_DATASET_MAX_ID,
             strlen(d->ids + (size_t)(s->sh.p0 + i) * LS_DATASET_MAX_ID));
    rc = ls_h5out_create_dataset(&s->out.h5, "/samples/id", t, 1, &N);
    rc |= ls_h5out_write(&s->out.h5, "/samples/id", t, 1, &start, &count, buf);
    free(buf);
    H5Tclose(t);
  }
  /* /samples/input_ids [n_tokens]: what went in, every pooling mode; prompt i is
   * input_ids[offsets[i] : offsets[i + 1]] (offsets: the running sum of /samples/length) */
  if (rc == LS_OK) {
    hsize_t nt = (hsize_t)d->n_tokens, t0 = (hsize_t)d->offsets[s->sh.p0];
    hsize_t tc = (hsize_t)(d->offsets[s->sh.p0 + s->sh.n_prompts] - d->offsets[s->sh.p0]);
    rc = ls_h5out_create_dataset(&s->out.h5, "/samples/input_ids", H5T_STD_I32LE, 1, &nt);
    rc |= ls_h5out_write(&s->out.h5, "/samples/input_ids", H5T_NATIVE_INT32, 1, &t0, &tc,
                         d->tokens + t0);
  }
  if (rc == LS_OK && d->from_text) { /* text input: the tokenizer that made the ids */
    rc |= ls_sw_write_str_attr(s, "input", "text, tokenized with the model's tokenizer.json");
    rc |= ls_sw_write_str_attr(s, "tokenizer_sha256", d->tok_sha256);
    rc |= ls_sw_write_str_attr(s, "tokenizer_special_tokens", d->tok_policy);
  }
  if (rc == LS_OK && (d->from_text || s->o->max_tokens > 0)) {
    int64_t mt[2] = {s->o->max_tokens, d->n_truncated}; /* --max-tokens (0: none), prompts cut */
    rc = ls_h5out_attr_i64(&s->out.h5, "/", "max_tokens", mt, 2);
  }
  if (rc == LS_OK) rc = dimension_scales(s);
  if (rc == LS_OK) rc = ls_sw_reduce_create(s);
  if (rc == LS_OK) rc = ls_sw_verify_create(s);
  if (rc == LS_OK) rc = ls_h5out_flush(&s->out.h5);
  return ls_agree(rc, s->comm);
}

/* --out-dtype float16 / bfloat16: this rank's rows of hook h, rounded in place (the host
 * buffer then holds 2-byte values). A float16 overflow stops the run: the value cannot be
 * stored (layer < 0: final_norm). */
static int narrow_rows(sweep_t *s, ls_hook_t h, int layer) {
  if (s->out.out_dt == LS_DT_F32 || h == LS_HOOK_ROUTER_LOGITS) return LS_OK;
  float mx = 0;
  const size_t n = (size_t)s->sh.out_rows * (size_t)ls_sw_store_width(s, h);
  const size_t over = ls_narrow_f32_inplace(s->buf.out_host[h], s->out.out_dt, n, &mx);
  if (over == 0) return LS_OK;
  char where[48];
  if (layer >= 0) snprintf(where, sizeof where, "layer %d", layer);
  else snprintf(where, sizeof where, "the final norm");
  ls_error("%s: %zu values of %s at %s are beyond float16's range (|x| up to %.4g > 65504); "
           "rerun with --out-dtype bfloat16 or float32", s->o->out_path, over, ls_hook_name(h),
           where, (double)mx);
  return LS_ERR;
}

int ls_sw_write_hook(sweep_t *s, ls_hook_t h, int sel) {
  const hsize_t H = (hsize_t)ls_sw_store_width(s, h);
  const int layer = h == LS_HOOK_FINAL_NORM ? -1
                    : h == LS_HOOK_ROUTER_LOGITS ? s->sel.moe_layers[sel] : s->sel.layers[sel];
  if (s->out.fault_layer >= 0 && layer >= 0 && layer == s->out.fault_layer) {
    ls_error("%s: injected write failure at layer %d (LS_FAULT_WRITE_LAYER, as if the disk "
             "were full); rerun with --resume", s->o->out_path, s->out.fault_layer);
    return LS_ERR;
  }
  char name[64];
  snprintf(name, sizeof name, "/%s", ls_hook_name(h));
  /* 16-bit output: rounded here, written as the file's own type (no HDF5 conversion) */
  int rc = narrow_rows(s, h, layer);
  const hid_t mtype = s->out.out_dt == LS_DT_F32 || h == LS_HOOK_ROUTER_LOGITS
                         ? H5Tcopy(H5T_NATIVE_FLOAT) : ls_h5out_float_type(s->out.out_dt);
  /* every rank takes part in the collective write, even one whose rows failed */
  const hsize_t rows = rc == LS_OK ? (hsize_t)s->sh.out_rows : 0;
  int wrc;
  if (h == LS_HOOK_FINAL_NORM) {
    hsize_t start[2] = {(hsize_t)s->sh.out_row0, 0}, count[2] = {rows, rows ? H : 0};
    wrc = ls_h5out_write(&s->out.h5, name, mtype, 2, start, count, s->buf.out_host[h]);
  } else {
    hsize_t start[3] = {(hsize_t)sel, (hsize_t)s->sh.out_row0, 0};
    hsize_t count[3] = {1, rows, H};
    if (rows == 0) count[0] = count[2] = 0;
    wrc = ls_h5out_write(&s->out.h5, name, mtype, 3, start, count, s->buf.out_host[h]);
  }
  H5Tclose(mtype);
  return rc != LS_OK ? rc : wrc;
}

/* ---- router stats ----------------------------------------------------------------------------------- */
int ls_sw_write_router_stats(sweep_t *s, int upto) {
  if (!s->prof.expert_rows) return LS_OK;
  const int E = s->cfg->n_experts, first = s->prof.stats_next;
  int row0 = 0, nm = 0, all = 0;
  for (int L = 0; L < s->sel.n_run; L++)
    if (ls_config_is_moe(s->cfg, L)) {
      all++;
      if (L < first) row0++;
      else if (L < upto) nm++;
    }
  if (all == 0) return LS_OK; /* no dataset */
  int64_t *v = ls_malloc(sizeof(int64_t) * (size_t)(nm + 1) * (size_t)E, "router stats");
  if (!v) return LS_ERR;
  int k = 0;
  for (int L = first; L < upto; L++)
    if (ls_config_is_moe(s->cfg, L))
      memcpy(v + (size_t)k++ * E, s->prof.expert_rows + (size_t)L * E, sizeof(int64_t) * (size_t)E);
  hsize_t start[2] = {(hsize_t)row0, 0}, count[2] = {(hsize_t)nm, (hsize_t)E};
  if (s->rank != 0 || nm == 0) count[0] = count[1] = 0;
  int rc = ls_h5out_write(&s->out.h5, "/router_stats/expert_rows", H5T_NATIVE_INT64, 2, start,
                          count, v);
  free(v);
  if (rc == LS_OK && upto > s->prof.stats_next) s->prof.stats_next = upto;
  return rc;
}

/* ---- profile ---------------------------------------------------------------------------------------- */
int ls_sw_write_profile(sweep_t *s, const ls_wpipe_t *wp) {
  const int n = s->sel.n_run, first = s->start;
  const double *fields[7] = {wp->read_s, wp->read_wait_s, wp->bcast_wait_s, s->prof.t_load,
                             s->prof.t_forward, s->prof.t_hooks, s->prof.t_write};
  int rc = LS_OK;
  /* this run's layers only: a resumed run keeps the earlier run's columns */
  for (int i = 0; i < 7 && rc == LS_OK; i++) {
    char name[64];
    snprintf(name, sizeof name, "/profile/%s", ls_sw_profile_fields[i]);
    hsize_t start[2] = {(hsize_t)s->rank, (hsize_t)first}, count[2] = {1, (hsize_t)(n - first)};
    if (n == first) count[0] = 0;
    rc = ls_h5out_write(&s->out.h5, name, H5T_NATIVE_DOUBLE, 2, start, count, fields[i] + first);
  }
  double *bytes = ls_calloc((size_t)n + 1, sizeof(double), "profile");
  if (!bytes) return LS_ERR;
  for (int L = 0; L < n; L++) bytes[L] = (double)s->model.layer_bytes[L];
  hsize_t start1 = 0, count1 = s->rank == 0 ? (hsize_t)n : 0;
  if (rc == LS_OK) rc = ls_h5out_write(&s->out.h5, "/profile/layer_bytes", H5T_NATIVE_DOUBLE, 1, &start1, &count1, bytes);
  free(bytes);
  if (rc == LS_OK) rc = ls_sw_write_router_stats(s, s->sel.n_run);
  double totals[3] = {(double)(s->rank == 0 ? s->model.st.bytes_read : 0), (double)s->prof.embed_bytes,
                      s->prof.t_total};
  MPI_Bcast(totals, 3, MPI_DOUBLE, 0, s->comm);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->out.h5, "/profile", "bytes_read", &totals[0], 1);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->out.h5, "/profile", "embedding_bytes_read", &totals[1], 1);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->out.h5, "/profile", "total_s", &totals[2], 1);
  /* a remote model: body bytes from the network (this run), the seconds with a transfer
   * running, bytes served by the range cache */
  ls_http_stats_t hs;
  memset(&hs, 0, sizeof hs);
  if (s->rank == 0) ls_http_get_stats(&hs);
  double net[4] = {(double)hs.net_bytes, hs.net_s, (double)hs.cache_bytes, (double)hs.retries};
  MPI_Bcast(net, 4, MPI_DOUBLE, 0, s->comm);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->out.h5, "/profile", "network_bytes", &net[0], 1);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->out.h5, "/profile", "network_s", &net[1], 1);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->out.h5, "/profile", "http_cache_bytes", &net[2], 1);
  if (rc == LS_OK) rc = ls_h5out_attr_f64(&s->out.h5, "/profile", "http_retries", &net[3], 1);
  return ls_agree(rc, s->comm);
}


int ls_sw_reshape_profile(sweep_t *s) {
  const char *prof[8];
  char names[7][64];
  int zero[8], one[8];
  for (int i = 0; i < 7; i++) {
    snprintf(names[i], sizeof names[i], "/profile/%s", ls_sw_profile_fields[i]);
    prof[i] = names[i];
    zero[i] = 0;
    one[i] = 1;
  }
  prof[7] = NULL;
  /* detached from both scales, then unlinked; /rank re-made at this run's length */
  int rc = ls_h5out_drop_datasets(&s->out.h5, "/layer_computed", prof, one);
  if (rc == LS_OK) rc = ls_h5out_unlink(&s->out.h5, "/rank");
  for (int i = 0; i < 7 && rc == LS_OK; i++) {
    hsize_t dims[2] = {(hsize_t)s->size, (hsize_t)s->sel.n_run};
    rc = ls_h5out_create_dataset(&s->out.h5, prof[i], H5T_IEEE_F64LE, 2, dims);
  }
  if (rc == LS_OK) rc = coordinate(s, "rank", (hsize_t)s->size, (hsize_t)s->rank, 1, NULL, prof, zero);
  if (rc == LS_OK) rc = ls_h5out_dim_scale(&s->out.h5, "/layer_computed", "layer_computed", prof, one);
  int64_t nranks = s->size;
  if (rc == LS_OK) rc = ls_h5out_attr_i64(&s->out.h5, "/", "n_ranks", &nranks, 1);
  return rc;
}

/* The output file of a resumed run must be the one this run would have created. */
int ls_sw_check_output(sweep_t *s) {
  const hsize_t R = (hsize_t)s->sh.n_out_rows;
  hsize_t dims[4];
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    char name[64];
    snprintf(name, sizeof name, "/%s", ls_hook_name(h));
    const hsize_t W = (hsize_t)ls_sw_store_width(s, h);
    int nd = ls_h5out_dataset_dims(&s->out.h5, name, dims, 4);
    int want = (s->sel.hooks >> h) & 1 && !s->o->no_store;
    int ok = !want ? nd < 0
             : h == LS_HOOK_FINAL_NORM ? nd == 2 && dims[0] == R && dims[1] == W
                                       : nd == 3 && dims[0] == (hsize_t)ls_sw_hook_layers(s, h) &&
                                             dims[1] == R && dims[2] == W;
    if (!ok) return LS_ERR;
  }
  int nd = ls_h5out_dataset_dims(&s->out.h5, "/profile/read_s", dims, 4);
  return nd == 2 && dims[0] == (hsize_t)s->size && dims[1] == (hsize_t)s->sel.n_run ? LS_OK : LS_ERR;
}

/* ---- per-layer writes: collective HDF5, or overlapped by the writer thread ---------------------- */
/* Every per-layer hook dataset must be contiguous with its raw data placed (HDF5 says
 * where), and the host's floats little-endian as the file's. */
int ls_sw_writer_start(sweep_t *s) {
  s->out.in_flight = -1;
  s->out.overlap = 0;
  if (!s->o->overlap_writes || s->sel.n_sel == 0 || s->o->no_store) return LS_OK;
  const uint32_t probe = 1;
  int ok = *(const unsigned char *)&probe == 1;
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    if (!((s->sel.hooks >> h) & 1) || !ls_hook_layered(h)) continue;
    char name[64];
    snprintf(name, sizeof name, "/%s", ls_hook_name(h));
    /* collective metadata: every rank asks, even once one said no */
    if (ls_h5out_raw_offset(&s->out.h5, name, &s->out.raw_off[h])) ok = 0;
  }
  int all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, s->comm);
  if (!all) {
    if (s->rank == 0)
      ls_info("writes: collective HDF5 after each layer (%s)",
              s->o->compress ? "--compress: chunked, deflated datasets"
                             : "the datasets' raw data has no fixed place in the file");
    return LS_OK;
  }
  int rc = ls_writer_start(&s->out.writer, s->o->out_path);
  if (ls_agree_report(rc, s->comm)) {
    ls_writer_stop(&s->out.writer);
    return LS_ERR;
  }
  s->out.overlap = 1;
  return LS_OK;
}

void ls_sw_writer_stop(sweep_t *s) {
  ls_writer_stop(&s->out.writer);
  s->out.in_flight = -1;
}

/* layer L (selection index sel) is on disk on every rank: its marker, flushed */
static int mark_done(sweep_t *s, int L, int sel) {
  s->out.done_marks[sel] = L;
  COLLECTIVE_STEP(s, ls_h5out_attr_i64(&s->out.h5, "/", "layers_completed", s->out.done_marks,
                                       s->sel.n_sel));
  COLLECTIVE_STEP(s, ls_h5out_flush(&s->out.h5));
  return LS_OK;
}

int ls_sw_drain_writes(sweep_t *s) {
  if (!s->out.overlap || s->out.in_flight < 0) return LS_OK;
  const int L = s->out.in_flight;
  s->out.in_flight = -1;
  COLLECTIVE_STEP(s, ls_writer_wait(&s->out.writer, NULL));
  return mark_done(s, L, s->sel.sel_index[L]);
}

int ls_sw_write_layer(sweep_t *s, int L, int sel) {
  if (!s->out.overlap) {
    /* every collective step is agreed on before the next, so a failure on any rank stops
     * all of them at the same point, reported once */
    for (int h = 0; h < LS_HOOK_COUNT && !s->o->no_store; h++)
      if ((s->sel.hooks & (1u << h)) && ls_hook_layered(h) && ls_sw_hook_index(s, h, L) >= 0)
        COLLECTIVE_STEP(s, ls_sw_write_hook(s, h, ls_sw_hook_index(s, h, L)));
    /* the marker goes in only after the rows are on disk */
    COLLECTIVE_STEP(s, ls_h5out_flush(&s->out.h5));
    return mark_done(s, L, sel);
  }
  if (ls_sw_drain_writes(s)) return LS_ERR;
  if (s->out.fault_layer == L) {
    COLLECTIVE_STEP(s, (ls_error("%s: injected write failure at layer %d (LS_FAULT_WRITE_LAYER, "
                                 "as if the disk were full); rerun with --resume", s->o->out_path,
                                 L), LS_ERR));
  }
  /* 16-bit output: rounded before the writer takes the rows */
  int nrc = LS_OK;
  for (int h = 0; h < LS_HOOK_PER_LAYER_COUNT && nrc == LS_OK; h++)
    if ((s->sel.hooks >> h) & 1) nrc = narrow_rows(s, h, L);
  COLLECTIVE_STEP(s, nrc);
  /* this rank's rows of each hook: (index, out_row0 .. + out_rows, width) of the dataset */
  ls_write_piece_t p[LS_WRITER_MAX_PIECES];
  int n = 0;
  for (int h = 0; h < LS_HOOK_COUNT; h++) {
    const int at = ls_hook_layered(h) ? ls_sw_hook_index(s, h, L) : -1;
    if (!((s->sel.hooks >> h) & 1) || at < 0 || s->sh.out_rows == 0) continue;
    const size_t es = h == LS_HOOK_ROUTER_LOGITS ? sizeof(float) : ls_dtype_size(s->out.out_dt);
    const size_t row = es * (size_t)ls_sw_store_width(s, h);
    const uint64_t first = (uint64_t)at * (uint64_t)s->sh.n_out_rows + (uint64_t)s->sh.out_row0;
    p[n].offset = s->out.raw_off[h] + first * row;
    p[n].buf = s->buf.out_host[h];
    p[n].bytes = row * (size_t)s->sh.out_rows;
    n++;
    /* the next layer captures into the other buffer */
    float *t = s->buf.out_host[h];
    s->buf.out_host[h] = s->buf.out_alt[h];
    s->buf.out_alt[h] = t;
    if (s->be->host_visible) s->buf.out[h] = s->buf.out_host[h];
  }
  ls_writer_submit(&s->out.writer, L, p, n);
  s->out.in_flight = L;
  return LS_OK;
}
