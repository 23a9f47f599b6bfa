/* test_fixtures.c: end-to-end sweeps on the Hugging Face fixtures (tests/fixtures,
 * made by gen_fixtures.py with transformers' own forward in float64), under any
 * number of MPI ranks (CTest runs it plain and under mpirun -np 2/3/4):
 *   - every hook and layer of every fixture model within 1e-5 of transformers,
 *     raw (--pool none) and pooled (last_token, mean), and a layer subset;
 *   - the file of P ranks bit-identical to one rank's (run on MPI_COMM_SELF), for
 *     several --microbatch-tokens, including more ranks than prompts;
 *   - weight bytes read == the model's layer + norm tensors + used embedding rows,
 *     whatever P; the profile datasets exist and are sane.
 * LS_TEST_BACKEND=cuda (LS_TEST_DTYPE=float32 or bf16) runs the same checks on the GPU
 * (CTest: gpu.test_fixtures.*): float32 within 1e-4 of transformers, bf16 within 2e-2,
 * and batchings compared within that tolerance instead of bit for bit (bit-identity
 * is the CPU backend's promise). Without a usable GPU it prints SKIPPED and exits 77. */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "dataset.h"
#include "hooks.h"
#include "ls_common.h"
#include "backend_cuda.h"
#include "safetensors.h"
#include "sweep.h"

static int rank, size;
static const char *backend = "cpu", *dtype = "auto";
static double tol = 1e-5; /* row-wise relative error allowed against transformers */
static int exact = 1;     /* batchings and rank counts compared bit for bit */
static char fixtures[2048], tmp[2048];

static const char *models[] = {"llama_gqa_f32",    "llama_mqa_bf16", "qwen2_bias_sharded",
                               "llama3_rope_f16",  "mistral_window", "llama_linear_rope"};
#define N_MODELS (sizeof models / sizeof models[0])

/* ---- helpers ---------------------------------------------------------------------------- */
/* Path of a per-test output file; identical on every rank. */
static void out_path(char *buf, size_t cap, const char *fmt, ...) {
  char name[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  snprintf(buf, cap, "%s/%s_np%d.h5", tmp, name, size);
}

static int sweep(const char *model, const char *data, const char *out, const char *hooks,
                 const char *layers, const char *pool, int64_t mb, MPI_Comm comm) {
  char mdir[4200], dpath[4200];
  snprintf(mdir, sizeof mdir, "%s/%s", fixtures, model);
  if (data[0] == '/') snprintf(dpath, sizeof dpath, "%s", data);
  else snprintf(dpath, sizeof dpath, "%s/%s", fixtures, data);
  ls_run_opts_t o;
  ls_run_opts_default(&o);
  o.model_dir = mdir;
  o.data_path = dpath;
  o.out_path = out;
  o.hooks = hooks;
  o.layers = layers;
  o.pool = pool;
  o.microbatch_tokens = mb;
  o.force = 1;
  o.progress = 0;
  o.threads = 1;
  o.backend = backend;
  o.dtype = dtype;
  o.command = "test_fixtures";
  return ls_sweep_run(&o, comm);
}

/* Read a whole dataset (serial HDF5, rank 0). Returns malloc'd data and its dims. */
static void *h5_read(const char *path, const char *name, hid_t mem_type, size_t elem,
                     hsize_t *dims, int *ndim) {
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return NULL;
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d < 0) { H5Fclose(f); return NULL; }
  hid_t sp = H5Dget_space(d);
  *ndim = H5Sget_simple_extent_dims(sp, dims, NULL);
  size_t n = 1;
  for (int i = 0; i < *ndim; i++) n *= dims[i];
  void *buf = malloc(n * elem + 1);
  if (H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) { free(buf); buf = NULL; }
  H5Sclose(sp);
  H5Dclose(d);
  H5Fclose(f);
  return buf;
}

static void h5_attr_str(const char *path, const char *obj, const char *name, char *out, size_t cap) {
  out[0] = '\0';
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return;
  hid_t a = H5Aopen_by_name(f, obj, name, H5P_DEFAULT, H5P_DEFAULT);
  if (a >= 0) {
    hid_t t = H5Aget_type(a);
    size_t n = H5Tget_size(t);
    char *buf = calloc(n + 1, 1);
    if (H5Aread(a, t, buf) >= 0) snprintf(out, cap, "%s", buf);
    free(buf);
    H5Tclose(t);
    H5Aclose(a);
  }
  H5Fclose(f);
}

static int h5_attr_i64(const char *path, const char *obj, const char *name, int64_t *v, int cap) {
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return -1;
  int n = -1;
  hid_t a = H5Aopen_by_name(f, obj, name, H5P_DEFAULT, H5P_DEFAULT);
  if (a >= 0) {
    hid_t sp = H5Aget_space(a);
    hssize_t cnt = H5Sget_simple_extent_npoints(sp);
    if (cnt <= cap && H5Aread(a, H5T_NATIVE_INT64, v) >= 0) n = (int)cnt;
    H5Sclose(sp);
    H5Aclose(a);
  }
  H5Fclose(f);
  return n;
}

static double h5_attr_f64(const char *path, const char *obj, const char *name) {
  double v = NAN;
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return v;
  hid_t a = H5Aopen_by_name(f, obj, name, H5P_DEFAULT, H5P_DEFAULT);
  if (a >= 0) {
    H5Aread(a, H5T_NATIVE_DOUBLE, &v);
    H5Aclose(a);
  }
  H5Fclose(f);
  return v;
}

/* Expected activations: tensor `name` of <model>/expected.safetensors as float32. */
typedef struct { float *v; int64_t shape[3]; int ndim; } expected_t;

static expected_t load_expected(const char *model, const char *name) {
  expected_t e = {0};
  char path[4200];
  snprintf(path, sizeof path, "%s/%s/expected.safetensors", fixtures, model);
  size_t len;
  FILE *f = fopen(path, "rb");
  if (!f) return e;
  fseek(f, 0, SEEK_END);
  len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc(len);
  if (fread(buf, 1, len, f) != len) { fclose(f); free(buf); return e; }
  fclose(f);
  uint64_t hlen;
  memcpy(&hlen, buf, 8);
  ls_st_tensor_t *t = NULL;
  int n = 0;
  if (ls_st_parse_header(buf + 8, (size_t)hlen, len, path, 0, &t, &n) == 0) {
    for (int i = 0; i < n; i++) {
      if (strcmp(t[i].name, name) != 0 || t[i].dtype != LS_DT_F32) continue;
      e.v = malloc(t[i].nbytes);
      memcpy(e.v, buf + t[i].offset, t[i].nbytes);
      e.ndim = t[i].ndim;
      for (int k = 0; k < t[i].ndim; k++) e.shape[k] = t[i].shape[k];
    }
  }
  free(t);
  free(buf);
  return e;
}

/* Row-wise check: max |a - ref| over a row <= tol * max |ref| over that row. */
static void assert_rows_close(const float *a, const float *ref, int64_t rows, int64_t H,
                              const char *what) {
  for (int64_t r = 0; r < rows; r++) {
    double err = 0, mag = 0;
    for (int64_t i = 0; i < H; i++) {
      double x = a[r * H + i], y = ref[r * H + i];
      if (!isfinite(x)) fail_msg("%s: row %lld has a non-finite value", what, (long long)r);
      err = fmax(err, fabs(x - y));
      mag = fmax(mag, fabs(y));
    }
    if (err > tol * mag + 1e-30)
      fail_msg("%s: row %lld: max abs error %.3g vs row max %.3g (relative %.3g > %.0e)", what,
               (long long)r, err, mag, err / mag, tol);
  }
}

/* Expected pooled rows (n_prompts, H) from raw rows (T, H). */
static float *pool_expected(const float *raw, const ls_dataset_t *d, int64_t H, ls_pool_t mode) {
  float *out = malloc(sizeof(float) * (size_t)(d->n * H));
  for (int64_t i = 0; i < d->n; i++) {
    int64_t a = d->offsets[i], b = d->offsets[i + 1];
    for (int64_t h = 0; h < H; h++) {
      if (mode == LS_POOL_LAST) { out[i * H + h] = raw[(b - 1) * H + h]; continue; }
      double acc = 0;
      for (int64_t t = a; t < b; t++) acc += raw[t * H + h];
      out[i * H + h] = (float)(acc / (double)(b - a));
    }
  }
  return out;
}

static ls_dataset_t load_prompts(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/prompts.jsonl", fixtures);
  ls_dataset_t d;
  assert_int_equal(ls_dataset_load(path, 1 << 30, 0, &d), 0);
  return d;
}

/* ---- every fixture, every hook, raw tokens ---------------------------------------------------- */
static void test_hf_fixtures_raw(void **state) {
  (void)state;
  ls_dataset_t d = load_prompts();
  int rc[N_MODELS];
  /* all sweeps first (collective), then rank 0 checks: a failed check never leaves the
   * other ranks waiting in a collective */
  for (size_t m = 0; m < N_MODELS; m++) {
    char out[4400];
    out_path(out, sizeof out, "raw_%s", models[m]);
    rc[m] = sweep(models[m], "prompts.jsonl", out, "all", "all", "none", 4096, MPI_COMM_WORLD);
  }
  for (size_t m = 0; m < N_MODELS; m++) {
    char out[4400];
    out_path(out, sizeof out, "raw_%s", models[m]);
    assert_int_equal(rc[m], 0);
    if (rank != 0) continue;
    char status[64];
    h5_attr_str(out, "/", "status", status, sizeof status);
    assert_string_equal(status, "complete");
    for (int h = 0; h < LS_HOOK_COUNT; h++) {
      expected_t e = load_expected(models[m], ls_hook_name(h));
      assert_non_null(e.v);
      hsize_t dims[3];
      int nd;
      char name[64];
      snprintf(name, sizeof name, "/%s", ls_hook_name(h));
      float *got = h5_read(out, name, H5T_NATIVE_FLOAT, sizeof(float), dims, &nd);
      assert_non_null(got);
      assert_int_equal(nd, e.ndim);
      for (int k = 0; k < nd; k++) assert_int_equal(dims[k], e.shape[k]);
      int64_t H = e.shape[nd - 1], rows = 1;
      for (int k = 0; k < nd - 1; k++) rows *= e.shape[k];
      assert_int_equal(dims[nd - 2], d.n_tokens);
      char what[256];
      snprintf(what, sizeof what, "%s %s (pool none)", models[m], ls_hook_name(h));
      assert_rows_close(got, e.v, rows, H, what);
      free(got);
      free(e.v);
    }
    /* samples */
    hsize_t dims[3];
    int nd;
    int64_t *len = h5_read(out, "/samples/length", H5T_NATIVE_INT64, 8, dims, &nd);
    int64_t *off = h5_read(out, "/samples/offsets", H5T_NATIVE_INT64, 8, dims, &nd);
    int64_t *lab = h5_read(out, "/samples/label", H5T_NATIVE_INT64, 8, dims, &nd);
    assert_non_null(len);
    assert_non_null(off);
    assert_non_null(lab);
    for (int64_t i = 0; i < d.n; i++) {
      assert_int_equal(len[i], ls_dataset_len(&d, i));
      assert_int_equal(off[i], d.offsets[i]);
      assert_int_equal(lab[i], d.labels[i]);
    }
    assert_int_equal(off[d.n], d.n_tokens);
    free(len); free(off); free(lab);
  }
  ls_dataset_free(&d);
}

/* ---- pooled: last_token and mean, and a layer subset ------------------------------------------- */
static int run_pooled(const char *model, const char *pool_name) {
  char out[4400];
  out_path(out, sizeof out, "pool_%s_%s", model, pool_name);
  return sweep(model, "prompts.jsonl", out, "residual_pre,mlp_out,residual_post,final_norm",
               "all", pool_name, 37, MPI_COMM_WORLD);
}

static void check_pooled(const char *model, ls_pool_t mode, const char *pool_name) {
  ls_dataset_t d = load_prompts();
  char out[4400];
  out_path(out, sizeof out, "pool_%s_%s", model, pool_name);
  if (rank == 0) {
    const char *hooks[] = {"residual_pre", "mlp_out", "residual_post", "final_norm"};
    for (int h = 0; h < 4; h++) {
      expected_t e = load_expected(model, hooks[h]);
      assert_non_null(e.v);
      int64_t H = e.shape[e.ndim - 1], L = e.ndim == 3 ? e.shape[0] : 1;
      char name[64];
      snprintf(name, sizeof name, "/%s", hooks[h]);
      hsize_t dims[3];
      int nd;
      float *got = h5_read(out, name, H5T_NATIVE_FLOAT, sizeof(float), dims, &nd);
      assert_non_null(got);
      assert_int_equal(dims[nd - 2], d.n);
      for (int64_t l = 0; l < L; l++) {
        float *ref = pool_expected(e.v + l * d.n_tokens * H, &d, H, mode);
        char what[256];
        snprintf(what, sizeof what, "%s %s layer %lld (pool %s)", model, hooks[h], (long long)l,
                 pool_name);
        assert_rows_close(got + l * d.n * H, ref, d.n, H, what);
        free(ref);
      }
      free(got);
      free(e.v);
    }
  }
  ls_dataset_free(&d);
}

static void test_pool_last(void **state) {
  (void)state;
  int a = run_pooled("qwen2_bias_sharded", "last_token"), b = run_pooled("llama_mqa_bf16", "last_token");
  assert_int_equal(a, 0);
  assert_int_equal(b, 0);
  check_pooled("qwen2_bias_sharded", LS_POOL_LAST, "last_token");
  check_pooled("llama_mqa_bf16", LS_POOL_LAST, "last_token");
}

static void test_pool_mean(void **state) {
  (void)state;
  int a = run_pooled("llama_gqa_f32", "mean"), b = run_pooled("mistral_window", "mean");
  assert_int_equal(a, 0);
  assert_int_equal(b, 0);
  check_pooled("llama_gqa_f32", LS_POOL_MEAN, "mean");
  check_pooled("mistral_window", LS_POOL_MEAN, "mean");
}

static void test_layer_subset(void **state) {
  (void)state;
  char out[4400];
  out_path(out, sizeof out, "subset");
  assert_int_equal(sweep("llama3_rope_f16", "prompts.jsonl", out, "attn_out", "-1,0",
                         "last_token", 4096, MPI_COMM_WORLD), 0);
  if (rank != 0) return;
  int64_t layers[8];
  assert_int_equal(h5_attr_i64(out, "/attn_out", "layers", layers, 8), 2);
  assert_int_equal(layers[0], 0);
  assert_int_equal(layers[1], 2);
  hsize_t dims[3];
  int nd;
  float *got = h5_read(out, "/attn_out", H5T_NATIVE_FLOAT, sizeof(float), dims, &nd);
  assert_non_null(got);
  assert_int_equal(nd, 3);
  assert_int_equal(dims[0], 2);
  ls_dataset_t d = load_prompts();
  expected_t e = load_expected("llama3_rope_f16", "attn_out");
  int64_t H = e.shape[2];
  for (int i = 0; i < 2; i++) {
    float *ref = pool_expected(e.v + layers[i] * d.n_tokens * H, &d, H, LS_POOL_LAST);
    assert_rows_close(got + (int64_t)i * d.n * H, ref, d.n, H, "attn_out layer subset");
    free(ref);
  }
  /* datasets of hooks not asked for are absent */
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  assert_null(h5_read(out, "/residual_post", H5T_NATIVE_FLOAT, sizeof(float), dims, &nd));
  free(got);
  free(e.v);
  ls_dataset_free(&d);
}

/* ---- P ranks == 1 rank, bit for bit, for any microbatch size -------------------------------------- */
static void compare_files_bitwise(const char *a, const char *b, const char **names, int n) {
  for (int i = 0; i < n; i++) {
    hsize_t da[3], db[3];
    int na, nb;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    float *x = h5_read(a, names[i], H5T_NATIVE_FLOAT, sizeof(float), da, &na);
    float *y = h5_read(b, names[i], H5T_NATIVE_FLOAT, sizeof(float), db, &nb);
    if (!x && !y) continue; /* absent in both */
    assert_non_null(x);
    assert_non_null(y);
    assert_int_equal(na, nb);
    size_t cnt = 1;
    for (int k = 0; k < na; k++) {
      assert_int_equal(da[k], db[k]);
      cnt *= da[k];
    }
    if (exact && memcmp(x, y, cnt * sizeof(float)) != 0)
      fail_msg("%s differs between %s and %s", names[i], a, b);
    if (!exact) {
      char what[9000];
      snprintf(what, sizeof what, "%s: %s vs %s", names[i], a, b);
      assert_rows_close(x, y, (int64_t)(cnt / da[na - 1]), (int64_t)da[na - 1], what);
    }
    free(x);
    free(y);
  }
}

static void check_rank_invariance(const char *model, const char *data, const char *pool) {
  static const char *names[] = {"/residual_pre", "/attn_out", "/mlp_out", "/residual_post",
                                "/final_norm"};
  char ref[4400];
  snprintf(ref, sizeof ref, "%s/ref_%s_%s_r%d.h5", tmp, model, pool, size);
  int rc = 0;
  if (rank == 0) rc = sweep(model, data, ref, "all", "all", pool, 4096, MPI_COMM_SELF);
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  assert_int_equal(rc, 0);
  const int64_t mbs[] = {1, 29, 4096};
  int rcs[3];
  for (size_t i = 0; i < 3; i++) {
    char out[4400];
    out_path(out, sizeof out, "inv_%s_%s_mb%lld", model, pool, (long long)mbs[i]);
    rcs[i] = sweep(model, data, out, "all", "all", pool, mbs[i], MPI_COMM_WORLD);
  }
  for (size_t i = 0; i < 3; i++) {
    char out[4400];
    out_path(out, sizeof out, "inv_%s_%s_mb%lld", model, pool, (long long)mbs[i]);
    assert_int_equal(rcs[i], 0);
    if (rank == 0) compare_files_bitwise(ref, out, names, 5);
  }
}

static void test_rank_invariance_raw(void **state) {
  (void)state;
  check_rank_invariance("llama_gqa_f32", "prompts.jsonl", "none");
}

static void test_rank_invariance_mean(void **state) {
  (void)state;
  check_rank_invariance("qwen2_bias_sharded", "prompts.jsonl", "mean");
}

/* more ranks than prompts: ranks without prompts still take part in every collective */
static void test_more_ranks_than_prompts(void **state) {
  (void)state;
  char data[4200];
  snprintf(data, sizeof data, "%s/two_prompts.jsonl", tmp);
  if (rank == 0) {
    FILE *f = fopen(data, "w");
    fputs("{\"input_ids\": [5, 6, 7], \"label\": 1, \"id\": \"a\"}\n", f);
    fputs("{\"input_ids\": [9], \"label\": 0, \"id\": \"b\"}\n", f);
    fclose(f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  check_rank_invariance("mistral_window", data, "last_token");
}

/* ---- bytes read from disk and the profile ----------------------------------------------------------- */
static void test_bytes_read_and_profile(void **state) {
  (void)state;
  const char *model = "qwen2_bias_sharded";
  char out[4400];
  out_path(out, sizeof out, "bytes");
  assert_int_equal(sweep(model, "prompts.jsonl", out, "residual_post,final_norm", "all",
                         "last_token", 13, MPI_COMM_WORLD), 0);
  if (rank != 0) return;
  /* expected: every layer tensor + final norm, once; embedding rows of distinct ids */
  char mdir[4200];
  snprintf(mdir, sizeof mdir, "%s/%s", fixtures, model);
  ls_st_model_t st;
  assert_int_equal(ls_st_open_dir(mdir, &st), 0);
  uint64_t want = 0, row = 0;
  for (int i = 0; i < st.n_tensors; i++) {
    const ls_st_tensor_t *t = &st.tensors[i];
    if (strncmp(t->name, "model.layers.", 13) == 0 || strcmp(t->name, "model.norm.weight") == 0)
      want += t->nbytes;
    if (strcmp(t->name, "model.embed_tokens.weight") == 0) row = t->nbytes / (uint64_t)t->shape[0];
  }
  ls_st_close(&st);
  ls_dataset_t d = load_prompts();
  unsigned char seen[1 << 16] = {0};
  uint64_t distinct = 0;
  for (int64_t i = 0; i < d.n_tokens; i++)
    if (!seen[d.tokens[i]]++) distinct++;
  double emb = h5_attr_f64(out, "/profile", "embedding_bytes_read");
  double total = h5_attr_f64(out, "/profile", "bytes_read");
  assert_true(emb == (double)(distinct * row));
  assert_true(total == (double)(want + distinct * row));
  /* profile datasets: (ranks, layers), finite, non-negative; forward time positive */
  const char *fields[] = {"/profile/read_s", "/profile/bcast_wait_s", "/profile/forward_s",
                          "/profile/hooks_s", "/profile/write_s", "/profile/load_s"};
  for (int f = 0; f < 6; f++) {
    hsize_t dims[3];
    int nd;
    double *v = h5_read(out, fields[f], H5T_NATIVE_DOUBLE, sizeof(double), dims, &nd);
    assert_non_null(v);
    assert_int_equal(nd, 2);
    assert_int_equal(dims[0], size);
    assert_int_equal(dims[1], 3);
    for (hsize_t i = 0; i < dims[0] * dims[1]; i++) assert_true(isfinite(v[i]) && v[i] >= 0);
    if (strcmp(fields[f], "/profile/forward_s") == 0) assert_true(v[0] > 0);
    if (strcmp(fields[f], "/profile/read_s") == 0) assert_true(v[0] > 0);
    free(v);
  }
  ls_dataset_free(&d);
}

int main(int argc, char **argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const char *fx = getenv("LS_FIXTURES"), *tp = getenv("LS_TEST_TMP");
  snprintf(fixtures, sizeof fixtures, "%s", fx ? fx : "tests/fixtures");
  snprintf(tmp, sizeof tmp, "%s", tp ? tp : "/tmp");
  const char *be = getenv("LS_TEST_BACKEND"), *dt = getenv("LS_TEST_DTYPE");
  if (be && strcmp(be, "cuda") == 0) {
    char why[256] = "";
    int usable = ls_cuda_usable(why, sizeof why) > 0, all = 0;
    MPI_Allreduce(&usable, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!all) {
      if (rank == 0) printf("SKIPPED: test_fixtures on the CUDA backend: no usable GPU (%s)\n", why);
      MPI_Finalize();
      return 77;
    }
    backend = "cuda";
    dtype = dt && strcmp(dt, "bf16") == 0 ? "bf16" : "float32";
    tol = strcmp(dtype, "bf16") == 0 ? 2e-2 : 1e-4;
    exact = 0;
    snprintf(tmp + strlen(tmp), sizeof tmp - strlen(tmp), "/cuda_%s", dtype);
    if (rank == 0) mkdir(tmp, 0755);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) printf("test_fixtures on the CUDA backend, %s, tolerance %.0e\n", dtype, tol);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hf_fixtures_raw),
      cmocka_unit_test(test_pool_last),
      cmocka_unit_test(test_pool_mean),
      cmocka_unit_test(test_layer_subset),
      cmocka_unit_test(test_rank_invariance_raw),
      cmocka_unit_test(test_rank_invariance_mean),
      cmocka_unit_test(test_more_ranks_than_prompts),
      cmocka_unit_test(test_bytes_read_and_profile),
  };
  /* every rank runs every test (the sweeps are collective); rank 0 asserts */
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any ? 1 : 0;
}
