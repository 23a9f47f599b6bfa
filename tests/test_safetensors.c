/* test_safetensors.c: cmocka tests for io/safetensors.c.
 *
 * Round trips through the writer and reader with exact byte comparison, dtype
 * conversions against hand-computed bit patterns (plus exhaustive 16-bit round
 * trips), and one test per malformed input: each must make ls_st_open_dir fail
 * with a one-line message naming the problem, leave the model zeroed and leak no
 * file descriptor. Files live in a fresh mkdtemp directory under $LS_TEST_TMP. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_capture.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ls_common.h"
#include "safetensors.h"

/* ---- temp dirs and raw files ------------------------------------------------- */

static char g_dir[4096]; /* this test's fresh directory */

static int setup_dir(void **state) {
  test_mkdtemp(g_dir, sizeof g_dir, "ls_st_");
  return 0;
}

static int teardown_dir(void **state) {
  test_rmtree(g_dir);
  return 0;
}

static void path_in(char *out, size_t cap, const char *rel) {
  snprintf(out, cap, "%s/%s", g_dir, rel);
}

static void write_bytes(const char *rel, const void *bytes, size_t n) {
  char p[4200];
  path_in(p, sizeof p, rel);
  FILE *f = fopen(p, "wb");
  assert_non_null(f);
  if (n) assert_int_equal(fwrite(bytes, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

static void write_text(const char *rel, const char *s) { write_bytes(rel, s, strlen(s)); }

/* [u64 LE hdr_len][json][data_len bytes 0,1,2,...]; hdr_len is the JSON length. */
static void write_st_len(const char *rel, uint64_t hdr_len, const char *json, size_t data_len) {
  size_t jl = strlen(json), n = 8 + jl + data_len;
  unsigned char *b = malloc(n);
  assert_non_null(b);
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hdr_len >> (8 * i));
  memcpy(b + 8, json, jl);
  for (size_t i = 0; i < data_len; i++) b[8 + jl + i] = (unsigned char)(i * 7 + 1);
  write_bytes(rel, b, n);
  free(b);
}

static void write_st(const char *rel, const char *json, size_t data_len) {
  write_st_len(rel, strlen(json), json, data_len);
}

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* ls_st_open_dir(dir) must fail with exactly one stderr line containing `want`,
 * leave m zeroed and close every fd it opened. */
static void expect_open_fail_in(const char *dir, const char *want) {
  char cap[4200];
  snprintf(cap, sizeof cap, "%s.stderr", g_dir);
  int fds_before = count_fds();
  fflush(stderr);
  int saved = dup(2);
  int cfd = open(cap, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  assert_true(saved >= 0 && cfd >= 0);
  dup2(cfd, 2);
  close(cfd);
  ls_st_model_t m;
  memset(&m, 0xab, sizeof m);
  int rc = ls_st_open_dir(dir, &m);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  size_t len = 0;
  char *msg = ls_read_text_file(cap, 1 << 20, &len);
  assert_non_null(msg);
  unlink(cap);
  if (getenv("LS_TEST_VERBOSE")) fprintf(stderr, "  [%s] %s", want, msg);
  if (rc != -1 || !strstr(msg, want)) fprintf(stderr, "wanted '%s', got rc %d: %s", want, rc, msg);
  assert_int_equal(rc, -1);
  assert_non_null(strstr(msg, want));
  assert_true(len > 0 && msg[len - 1] == '\n');
  assert_ptr_equal(strchr(msg, '\n'), msg + len - 1); /* exactly one line */
  free(msg);
  assert_int_equal(m.n_files, 0);
  assert_int_equal(m.n_tensors, 0);
  assert_null(m.files);
  assert_null(m.tensors);
  assert_int_equal(count_fds(), fds_before);
}

static void expect_open_fail(const char *want) { expect_open_fail_in(g_dir, want); }

static void expect_open_ok(ls_st_model_t *m) {
  int rc = ls_st_open_dir(g_dir, m);
  assert_int_equal(rc, 0);
}

/* Baseline: two tensors tiling 16 data bytes. Every bad header below is one edit away. */
#define T_A "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"
#define T_B "\"b\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[8,16]}"

/* ---- writer -> reader round trip --------------------------------------------- */

static void test_roundtrip(void **state) {
  float f32[6] = {1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-40f}; /* (2, 3) */
  uint16_t f16[4] = {0x3c00, 0xc000, 0x7bff, 0x0001};      /* (4) */
  uint16_t bf16[6] = {0x3f80, 0x4049, 0xbf80, 0x7f80, 0x0001, 0x8000}; /* (3, 2) */
  float scalar = 42.0f;
  ls_st_wtensor_t wt[5] = {
      {.name = "model.layers.0.w", .dtype = LS_DT_F32, .ndim = 2, .shape = {2, 3}},
      {.name = "h", .dtype = LS_DT_F16, .ndim = 1, .shape = {4}},
      {.name = "empty", .dtype = LS_DT_F32, .ndim = 2, .shape = {0, 5}},
      {.name = "bf", .dtype = LS_DT_BF16, .ndim = 2, .shape = {3, 2}},
      {.name = "scalar", .dtype = LS_DT_F32, .ndim = 0},
  };
  char p[4200];
  path_in(p, sizeof p, "model.safetensors");
  ls_st_writer_t w;
  assert_int_equal(ls_st_writer_open(&w, p, wt, 5, "pt"), 0);
  assert_int_equal(w.data_start % 8, 0);
  assert_int_equal(w.nbytes[0], 24);
  assert_int_equal(w.offsets[1], 24);
  assert_int_equal(w.offsets[3], 32);
  assert_int_equal(w.nbytes[2], 0);
  /* out of order and in pieces */
  assert_int_equal(ls_st_writer_put(&w, 3, 0, bf16, 12), 0);
  assert_int_equal(ls_st_writer_put(&w, 0, 12, (char *)f32 + 12, 12), 0);
  assert_int_equal(ls_st_writer_put(&w, 0, 0, f32, 12), 0);
  assert_int_equal(ls_st_writer_put(&w, 1, 0, f16, 8), 0);
  assert_int_equal(ls_st_writer_put(&w, 4, 0, &scalar, 4), 0);
  assert_int_equal(ls_st_writer_put(&w, 2, 0, NULL, 0), 0);
  ls_error_set_quiet(1);
  assert_int_equal(ls_st_writer_put(&w, 1, 4, f16, 8), -1); /* past the tensor */
  assert_int_equal(ls_st_writer_put(&w, 5, 0, f16, 1), -1); /* no such tensor */
  ls_error_set_quiet(0);
  uint64_t data_start = w.data_start;
  assert_int_equal(ls_st_writer_close(&w), 0);

  struct stat st;
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal((uint64_t)st.st_size, data_start + 24 + 8 + 0 + 12 + 4);
  /* The header carries the metadata and is space-padded. */
  size_t flen;
  char *raw = ls_read_text_file(p, 1 << 20, &flen);
  assert_non_null(raw);
  assert_non_null(strstr(raw + 8, "\"__metadata__\":{\"format\":\"pt\"}"));
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)raw[i];
  assert_int_equal(hl + 8, data_start);
  assert_int_equal(raw[data_start - 1], ' ');
  free(raw);

  ls_st_model_t m;
  expect_open_ok(&m);
  assert_int_equal(m.n_files, 1);
  assert_string_equal(m.files[0].name, "model.safetensors");
  assert_int_equal(m.files[0].header_len, data_start);
  assert_int_equal(m.n_tensors, 5);
  for (int i = 1; i < m.n_tensors; i++)
    assert_true(strcmp(m.tensors[i - 1].name, m.tensors[i].name) < 0);

  const ls_st_tensor_t *t = ls_st_find(&m, "model.layers.0.w");
  assert_non_null(t);
  assert_int_equal(t->dtype, LS_DT_F32);
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 2);
  assert_int_equal(t->shape[1], 3);
  assert_int_equal(t->numel, 6);
  assert_int_equal(t->nbytes, 24);
  assert_int_equal(t->offset, data_start);
  float got[6];
  assert_int_equal(ls_st_read(&m, t, got), 0);
  assert_memory_equal(got, f32, 24);
  /* middle span: elements 2..4 */
  float mid[3] = {0};
  assert_int_equal(ls_st_read_range(&m, t, 8, 12, mid), 0);
  assert_memory_equal(mid, f32 + 2, 12);
  assert_int_equal(m.bytes_read, 36);

  t = ls_st_find(&m, "h");
  assert_non_null(t);
  assert_int_equal(t->dtype, LS_DT_F16);
  assert_int_equal(t->offset, data_start + 24);
  uint16_t h[4];
  assert_int_equal(ls_st_read(&m, t, h), 0);
  assert_memory_equal(h, f16, 8);

  t = ls_st_find(&m, "bf");
  assert_non_null(t);
  assert_int_equal(t->dtype, LS_DT_BF16);
  assert_int_equal(t->numel, 6);
  uint16_t b[6];
  assert_int_equal(ls_st_read(&m, t, b), 0);
  assert_memory_equal(b, bf16, 12);
  uint16_t b2[2];
  assert_int_equal(ls_st_read_range(&m, t, 4, 4, b2), 0);
  assert_memory_equal(b2, bf16 + 2, 4);

  t = ls_st_find(&m, "empty");
  assert_non_null(t);
  assert_int_equal(t->numel, 0);
  assert_int_equal(t->nbytes, 0);
  assert_int_equal(ls_st_read(&m, t, NULL), 0);

  t = ls_st_find(&m, "scalar");
  assert_non_null(t);
  assert_int_equal(t->ndim, 0);
  assert_int_equal(t->numel, 1);
  float s = 0;
  assert_int_equal(ls_st_read(&m, t, &s), 0);
  assert_true(s == 42.0f);

  assert_int_equal(m.bytes_read, 36 + 8 + 12 + 4 + 4);
  assert_null(ls_st_find(&m, "nope"));
  assert_null(ls_st_find(&m, "model.layers.0"));
  ls_st_close(&m);
  assert_int_equal(m.n_files, 0);
  assert_null(m.tensors);
}

static void test_read_range_bounds(void **state) {
  write_st("model.safetensors", "{" T_A "," T_B "}", 16);
  ls_st_model_t m;
  expect_open_ok(&m);
  const ls_st_tensor_t *a = ls_st_find(&m, "a");
  assert_non_null(a);
  char buf[16];
  ls_error_set_quiet(1);
  assert_int_equal(ls_st_read_range(&m, a, 4, 8, buf), -1);
  assert_int_equal(ls_st_read_range(&m, a, 9, 0, buf), -1);
  assert_int_equal(ls_st_read_range(&m, a, UINT64_MAX, 2, buf), -1);
  assert_int_equal(ls_st_read_range(&m, a, 2, UINT64_MAX - 1, buf), -1);
  ls_error_set_quiet(0);
  assert_int_equal(m.bytes_read, 0);
  assert_int_equal(ls_st_read_range(&m, a, 8, 0, buf), 0);
  assert_int_equal(ls_st_read_range(&m, a, 2, 6, buf), 0);
  const unsigned char want[6] = {2 * 7 + 1, 3 * 7 + 1, 4 * 7 + 1, 5 * 7 + 1, 6 * 7 + 1, 7 * 7 + 1};
  assert_memory_equal(buf, want, 6);
  assert_int_equal(m.bytes_read, 6);
  ls_st_close(&m);
}

/* Large reads not in the page cache go through O_DIRECT in aligned 16 MiB chunks read ahead
 * by two threads (io/source.c local_read): a 40 MiB tensor at an odd offset, evicted
 * from the page cache, read whole and in unaligned pieces across chunk edges, every byte
 * as written; and the same once cached (buffered path) and with LS_READ_DIRECT=0. */
static void test_direct_reads(void **state) {
  char path[4200];
  snprintf(path, sizeof path, "%s/model.safetensors", g_dir);
  const int64_t big = ((int64_t)40 << 20) + 6;
  const ls_st_wtensor_t t[2] = {{"a", LS_DT_U8, 1, {3}}, {"b", LS_DT_U8, 1, {big}}};
  ls_st_writer_t w;
  assert_int_equal(ls_st_writer_open(&w, path, t, 2, NULL), 0);
  unsigned char *bytes = malloc((size_t)big), *got = malloc((size_t)big);
  assert_non_null(bytes);
  assert_non_null(got);
  uint64_t x = 12345;
  for (int64_t i = 0; i < big; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    bytes[i] = (unsigned char)(x >> 56);
  }
  const unsigned char three[3] = {1, 2, 3};
  assert_int_equal(ls_st_writer_put(&w, 0, 0, three, 3), 0);
  assert_int_equal(ls_st_writer_put(&w, 1, 0, bytes, (uint64_t)big), 0);
  assert_int_equal(ls_st_writer_close(&w), 0);
  for (int pass = 0; pass < 3; pass++) {
    if (pass == 2) setenv("LS_READ_DIRECT", "0", 1);
    ls_st_model_t m;
    expect_open_ok(&m);
    const ls_st_tensor_t *b = ls_st_find(&m, "b");
    assert_non_null(b);
    assert_true(b->offset % 4096 != 0); /* not aligned: the bounce path */
    if (pass == 0) { /* out of the page cache: the O_DIRECT path */
      int fd = open(path, O_RDONLY);
      assert_true(fd >= 0);
      assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
      close(fd);
    }
    memset(got, 0, (size_t)big);
    assert_int_equal(ls_st_read(&m, b, got), 0);
    assert_memory_equal(got, bytes, (size_t)big);
    const uint64_t pieces[4][2] = {{1, (16u << 20) + 77}, {(16u << 20) - 5, 9u << 20},
                                   {(uint64_t)big - (5u << 20) - 1, (5u << 20) + 1},
                                   {4093, 4u << 20}};
    for (int k = 0; k < 4; k++) {
      if (pass == 0) {
        int fd = open(path, O_RDONLY);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
      }
      memset(got, 0, (size_t)pieces[k][1]);
      assert_int_equal(ls_st_read_range(&m, b, pieces[k][0], pieces[k][1], got), 0);
      assert_memory_equal(got, bytes + pieces[k][0], (size_t)pieces[k][1]);
    }
    if (pass == 0) assert_int_equal(m.files[0].src.direct, 1); /* the O_DIRECT path was taken */
    ls_st_close(&m);
  }
  unsetenv("LS_READ_DIRECT");
  free(bytes);
  free(got);
  unlink(path);
}

static void test_truncated_after_open(void **state) {
  write_st("model.safetensors", "{" T_A "," T_B "}", 16);
  ls_st_model_t m;
  expect_open_ok(&m);
  char p[4200];
  path_in(p, sizeof p, "model.safetensors");
  assert_int_equal(truncate(p, (off_t)(m.files[0].header_len + 10)), 0);
  const ls_st_tensor_t *b = ls_st_find(&m, "b");
  char buf[8];
  ls_error_set_quiet(1);
  assert_int_equal(ls_st_read(&m, b, buf), -1);
  ls_error_set_quiet(0);
  assert_int_equal(m.bytes_read, 0);
  ls_st_close(&m);
}

static void test_raw_valid_with_metadata(void **state) {
  /* hand-written: metadata, whitespace padding, tensors out of offset order */
  write_st("model.safetensors",
           "{\"__metadata__\":{\"format\":\"pt\",\"x\":\"y\"}," T_B "," T_A "}   \n", 16);
  ls_st_model_t m;
  expect_open_ok(&m);
  assert_int_equal(m.n_tensors, 2);
  assert_string_equal(m.tensors[0].name, "a");
  assert_string_equal(m.tensors[1].name, "b");
  uint64_t ds = m.files[0].header_len;
  assert_int_equal(m.tensors[0].offset, ds);
  assert_int_equal(m.tensors[1].offset, ds + 8);
  assert_int_equal(m.tensors[1].shape[1], 2);
  assert_int_equal(m.files[0].size, ds + 16);
  ls_st_close(&m);
}

static void test_writer_rejects(void **state) {
  char p[4200];
  path_in(p, sizeof p, "w.safetensors");
  ls_st_wtensor_t dup[2] = {{.name = "x", .dtype = LS_DT_F32, .ndim = 1, .shape = {1}},
                            {.name = "x", .dtype = LS_DT_F32, .ndim = 1, .shape = {1}}};
  ls_st_wtensor_t neg[1] = {{.name = "x", .dtype = LS_DT_F32, .ndim = 1, .shape = {-1}}};
  ls_st_writer_t w;
  ls_error_set_quiet(1);
  assert_int_equal(ls_st_writer_open(&w, p, dup, 2, NULL), -1);
  assert_int_equal(ls_st_writer_open(&w, p, neg, 1, NULL), -1);
  path_in(p, sizeof p, "no/such/dir/w.safetensors");
  assert_int_equal(ls_st_writer_open(&w, p, neg, 0, NULL), -1);
  ls_error_set_quiet(0);
  assert_int_equal(ls_st_writer_close(&w), 0);
}

/* ---- conversions --------------------------------------------------------------- */

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static void test_f16_to_f32(void **state) {
  const uint16_t in[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x3c00, 0xc000,
                         0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x3555, 0x3800};
  const uint32_t want[] = {0x00000000, 0x80000000, 0x33800000, 0xb3800000, 0x387fc000,
                           0x38800000, 0x3f800000, 0xc0000000, 0x477fe000, 0xc77fe000,
                           0x7f800000, 0xff800000, 0x3eaaa000, 0x3f000000};
  enum { N = sizeof in / sizeof in[0] };
  float out[N];
  ls_convert_to_f32(out, in, LS_DT_F16, N);
  for (int i = 0; i < N; i++) assert_int_equal(fbits(out[i]), want[i]);
  const uint16_t nans[] = {0x7e00, 0x7c01, 0xfe00, 0x7fff};
  float on[4];
  ls_convert_to_f32(on, nans, LS_DT_F16, 4);
  for (int i = 0; i < 4; i++) assert_true(isnan(on[i]));
  assert_true(signbit(on[2]));
}

static void test_bf16_f32_to_f32(void **state) {
  const uint16_t in[] = {0x0000, 0x8000, 0x3f80, 0x4049, 0x7f80, 0xff80, 0x0001, 0x7f7f};
  float out[8];
  ls_convert_to_f32(out, in, LS_DT_BF16, 8);
  for (int i = 0; i < 8; i++) assert_int_equal(fbits(out[i]), (uint32_t)in[i] << 16);
  const uint16_t nan = 0xffc1;
  ls_convert_to_f32(out, &nan, LS_DT_BF16, 1);
  assert_true(isnan(out[0]));
  const float f[3] = {1.5f, -0.0f, bitsf(0x7fc00001)};
  ls_convert_to_f32(out, f, LS_DT_F32, 3);
  assert_memory_equal(out, f, sizeof f);
  /* a long run exercises the vectorised loop and its tail */
  uint16_t big[1003];
  float bo[1003];
  for (int i = 0; i < 1003; i++) big[i] = (uint16_t)(i * 37);
  ls_convert_to_f32(bo, big, LS_DT_BF16, 1003);
  for (int i = 0; i < 1003; i++) assert_int_equal(fbits(bo[i]), (uint32_t)big[i] << 16);
}

static void test_f32_to_bf16(void **state) {
  const uint32_t in[] = {
      0x3f800000, /* 1.0 */
      0x3f808000, /* tie, 0x3f80 even: down */
      0x3f818000, /* tie, 0x3f81 odd: up to 0x3f82 */
      0x3f808001, /* above tie: up */
      0x3f807fff, /* below tie: down */
      0x80000000, /* -0 */
      0x7f800000, 0xff800000, /* +-inf */
      0x7f7fffff, /* FLT_MAX rounds to inf */
      0x7f7f7fff, /* largest that stays finite */
      0x00010000, /* subnormal, exact */
      0x00008000, /* subnormal tie to even 0 */
      0x00018000, /* subnormal tie to even 2 */
      0xbf818000, /* negative tie */
  };
  const uint16_t want[] = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x3f80, 0x8000, 0x7f80,
                           0xff80, 0x7f80, 0x7f7f, 0x0001, 0x0000, 0x0002, 0xbf82};
  enum { N = sizeof in / sizeof in[0] };
  float f[N];
  uint16_t out[N];
  for (int i = 0; i < N; i++) f[i] = bitsf(in[i]);
  ls_convert_from_f32(out, f, LS_DT_BF16, N);
  for (int i = 0; i < N; i++) assert_int_equal(out[i], want[i]);
  /* NaNs whose payload sits only in the low bits must not collapse to inf */
  const float nans[3] = {bitsf(0x7f800001), bitsf(0xff800001), bitsf(0x7fc00000)};
  uint16_t on[3];
  ls_convert_from_f32(on, nans, LS_DT_BF16, 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(on[i] & 0x7f80, 0x7f80);
    assert_int_not_equal(on[i] & 0x007f, 0);
  }
  assert_int_equal(on[1] & 0x8000, 0x8000);
}

static void test_f32_to_f16(void **state) {
  const uint32_t in[] = {
      0x3f800000, /* 1.0 */
      0x80000000, /* -0 */
      0x477fe000, /* 65504 max */
      0x477fefff, /* just below the tie: max */
      0x477ff000, /* 65520 tie: inf (max mantissa is odd) */
      0x49742400, /* 1e6: inf */
      0x7f800000, 0xff800000, /* +-inf */
      0x33800000, /* 2^-24 smallest subnormal */
      0x33000000, /* 2^-25 tie: 0 */
      0x33000001, /* just above: 1 */
      0x33c00000, /* 1.5 * 2^-24 tie: 2 */
      0x34200000, /* 2.5 * 2^-24 tie: 2 */
      0x387fc000, /* largest subnormal */
      0x387fe000, /* 1023.5 * 2^-24 tie: 1024 = smallest normal */
      0x38800000, /* 2^-14 */
      0x3f801000, /* 1 + 2^-11 tie: down to even */
      0x3f803000, /* 1 + 3 * 2^-11 tie: up to even */
      0x3f801001, /* above tie: up */
      0x3eaaaaab, /* 1/3 */
      0xae000000, /* -2^-35: -0 */
      0x00000001, /* float subnormal: 0 */
      0xc0000000, /* -2 */
  };
  const uint16_t want[] = {0x3c00, 0x8000, 0x7bff, 0x7bff, 0x7c00, 0x7c00, 0x7c00, 0xfc00,
                           0x0001, 0x0000, 0x0001, 0x0002, 0x0002, 0x03ff, 0x0400, 0x0400,
                           0x3c00, 0x3c02, 0x3c01, 0x3555, 0x8000, 0x0000, 0xc000};
  enum { N = sizeof in / sizeof in[0] };
  _Static_assert(sizeof want / sizeof want[0] == N, "table sizes");
  float f[N];
  uint16_t out[N];
  for (int i = 0; i < N; i++) f[i] = bitsf(in[i]);
  ls_convert_from_f32(out, f, LS_DT_F16, N);
  for (int i = 0; i < N; i++) assert_int_equal(out[i], want[i]);
  const float nans[3] = {bitsf(0x7f800001), bitsf(0xffc00000), NAN};
  uint16_t on[3];
  ls_convert_from_f32(on, nans, LS_DT_F16, 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(on[i] & 0x7c00, 0x7c00);
    assert_int_not_equal(on[i] & 0x03ff, 0);
  }
  assert_int_equal(on[1] & 0x8000, 0x8000);
}

/* Every non-NaN 16-bit pattern survives to_f32 -> from_f32 unchanged. */
static void test_exhaustive_roundtrip(void **state) {
  static uint16_t in[65536], back[65536];
  static float f[65536];
  for (int i = 0; i < 65536; i++) in[i] = (uint16_t)i;
  const ls_dtype_t dts[2] = {LS_DT_F16, LS_DT_BF16};
  for (int k = 0; k < 2; k++) {
    ls_convert_to_f32(f, in, dts[k], 65536);
    ls_convert_from_f32(back, f, dts[k], 65536);
    int exp_mask = dts[k] == LS_DT_F16 ? 0x7c00 : 0x7f80;
    for (int i = 0; i < 65536; i++) {
      int is_nan = (i & exp_mask) == exp_mask && (i & ~exp_mask & 0x7fff);
      if (is_nan) {
        assert_true(isnan(f[i]));
        assert_int_equal(back[i] & exp_mask, exp_mask);
        assert_int_not_equal(back[i] & ~exp_mask & 0x7fff, 0);
      } else {
        assert_int_equal(back[i], in[i]);
      }
    }
  }
  /* F16 values are exactly the float value: check a few against ldexp */
  ls_convert_to_f32(f, in, LS_DT_F16, 65536);
  assert_true(f[0x0005] == ldexpf(5.0f, -24));
  assert_true(f[0x3e00] == 1.5f);
  assert_true(f[0x5640] == 100.0f);
}

static void test_dtype_helpers(void **state) {
  ls_dtype_t d;
  assert_int_equal(ls_dtype_parse("BF16", &d), 0);
  assert_int_equal(d, LS_DT_BF16);
  assert_int_equal(ls_dtype_parse("F16", &d), 0);
  assert_int_equal(d, LS_DT_F16);
  assert_int_equal(ls_dtype_parse("F32", &d), 0);
  assert_int_equal(d, LS_DT_F32);
  assert_int_equal(ls_dtype_parse("f32", &d), -1);
  assert_int_equal(ls_dtype_parse("F64", &d), 0); /* storage only */
  assert_int_equal(d, LS_DT_F64);
  assert_int_equal(ls_dtype_parse("F8_E5M2", &d), 0);
  assert_int_equal(d, LS_DT_F8_E5M2);
  assert_int_equal(ls_dtype_parse("F4", &d), -1);
  assert_int_equal(ls_dtype_size(LS_DT_F32), 4);
  assert_int_equal(ls_dtype_size(LS_DT_BF16), 2);
  assert_string_equal(ls_dtype_name(LS_DT_F16), "F16");
}

/* ---- bad single files ---------------------------------------------------------- */

static void test_bad_no_model(void **state) { expect_open_fail("no model.safetensors"); }

static void test_bad_not_regular(void **state) {
  char p[4200];
  path_in(p, sizeof p, "model.safetensors");
  assert_int_equal(mkdir(p, 0755), 0);
  expect_open_fail("not a regular file");
}

static void test_bad_short_file(void **state) {
  write_bytes("model.safetensors", "\x02\0\0", 3);
  expect_open_fail("too short");
}

static void test_bad_hdr_len_past_eof(void **state) {
  write_st_len("model.safetensors", 1000, "{}", 0);
  expect_open_fail("header length 1000 past end of file (size 10)");
}

static void test_bad_hdr_len_zero(void **state) {
  write_st_len("model.safetensors", 0, "{}", 0);
  expect_open_fail("header length 0 is outside");
}

static void test_bad_hdr_len_over_cap(void **state) {
  write_st_len("model.safetensors", (uint64_t)LS_ST_MAX_HEADER + 1, "{}", 0);
  expect_open_fail("is outside [2,");
  write_st_len("model.safetensors", UINT64_MAX, "{}", 0);
  expect_open_fail("is outside [2,");
}

static void test_bad_not_json(void **state) {
  write_st("model.safetensors", "{not json}      ", 0);
  expect_open_fail("not valid JSON");
}

static void test_bad_json_trailing(void **state) {
  write_st("model.safetensors", "{" T_A "," T_B "}xx", 16);
  expect_open_fail("non-blank bytes after the JSON");
}

static void test_bad_nul_in_header(void **state) {
  static const char b[] = "\x04\0\0\0\0\0\0\0{}\0 ";
  write_bytes("model.safetensors", b, 12);
  expect_open_fail("NUL byte");
}

static void test_bad_not_object(void **state) {
  write_st("model.safetensors", "[1,2]", 0);
  expect_open_fail("not a JSON object");
}

static void test_bad_entry_not_object(void **state) {
  write_st("model.safetensors", "{" T_A ",\"b\":[8,16]}", 16);
  expect_open_fail("tensor 'b': header entry is not a JSON object");
}

static void test_bad_metadata_not_strings(void **state) {
  write_st("model.safetensors", "{\"__metadata__\":{\"n\":1}," T_A "," T_B "}", 16);
  expect_open_fail("\"__metadata__\" entry 'n' is not a string");
}

static void test_bad_dtype(void **state) {
  /* storage-only dtypes are readable (a checkpoint's unused I64 position_ids); whether a
   * tensor is computed with is the model's business (src/model.c) */
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[8,16]}}", 16);
  ls_st_model_t m;
  assert_int_equal(ls_st_open_dir(g_dir, &m), 0);
  const ls_st_tensor_t *b = ls_st_find(&m, "b");
  assert_non_null(b);
  assert_int_equal(b->dtype, LS_DT_I64);
  ls_st_close(&m);
  /* a size that does not fit its span, and a name that is no safetensors dtype */
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("shape x I64 size does not match");
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"Q4_K\",\"shape\":[8],\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("tensor 'b' has dtype Q4_K, which is not a safetensors dtype");
}

static void test_bad_missing_dtype(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":2,\"shape\":[4],\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("tensor 'b': missing or non-string \"dtype\"");
}

static void test_bad_span_mismatch(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("tensor 'b': shape x F16 size does not match its 8-byte span");
}

static void test_bad_shape_overflow(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,0],"
           "\"data_offsets\":[8,8]}}", 8);
  expect_open_fail("tensor 'b': element count (product of the shape) overflows");
  /* numel fits in 64 bits but numel * 4 does not */
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F32\",\"shape\":[4294967296,1073741824],"
           "\"data_offsets\":[8,8]}}", 8);
  expect_open_fail("tensor 'b': shape x F32 size does not match");
}

static void test_bad_negative_dim(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[-4],\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("tensor 'b': shape[0] is not a non-negative integer");
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[2,1.5],\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("tensor 'b': shape[1] is not a non-negative integer");
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[\"4\"],\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("shape[0] is not");
}

static void test_bad_too_many_dims(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[1,1,1,1,1,1,1,1,4],"
           "\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("tensor 'b' has 9 dimensions");
}

static void test_bad_offsets_outside(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[8,16]}}", 12);
  expect_open_fail("tensor 'b': data_offsets [8, 16] run past the data area (12 bytes)");
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[16,8]}}", 16);
  expect_open_fail("end before they begin");
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[8]}}", 16);
  expect_open_fail("\"data_offsets\" must be [begin, end]");
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[-8,0]}}", 16);
  expect_open_fail("\"data_offsets\" must be [begin, end]");
}

static void test_bad_overlap(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[4,12]}}", 12);
  expect_open_fail("tensors 'a' and 'b' overlap");
}

static void test_bad_hole(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[12,20]}}", 20);
  expect_open_fail("4 bytes of the data area before tensor 'b' (from 8) belong to no tensor");
}

static void test_bad_trailing_bytes(void **state) {
  write_st("model.safetensors", "{" T_A "," T_B "}", 20);
  expect_open_fail("4 trailing bytes after the last tensor");
}

static void test_bad_duplicate_name(void **state) {
  write_st("model.safetensors",
           "{" T_A ",\"a\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[8,16]}}", 16);
  expect_open_fail("tensor 'a' appears twice");
}

static void test_bad_name_too_long(void **state) {
  char json[1024], name[301];
  memset(name, 'x', 300);
  name[300] = '\0';
  snprintf(json, sizeof json,
           "{" T_A ",\"%s\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[8,16]}}", name);
  write_st("model.safetensors", json, 16);
  expect_open_fail("is 300 bytes long");
}

static void test_parse_header_direct(void **state) {
  /* The exported parser appends to an existing array and makes offsets absolute. */
  const char *h1 = "{" T_A "}";
  const char *h2 = "{" T_B ",\"z\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,2]}}";
  ls_st_tensor_t *ts = NULL;
  int n = 0;
  assert_int_equal(ls_st_parse_header(h1, strlen(h1), 8 + strlen(h1) + 8, "f1", 0, &ts, &n), 0);
  assert_int_equal(n, 1);
  /* z covers [0,2), b [8,16): a 6-byte hole; the failed call appends nothing */
  ls_error_set_quiet(1);
  assert_int_equal(ls_st_parse_header(h2, strlen(h2), 8 + strlen(h2) + 16, "f2", 1, &ts, &n), -1);
  ls_error_set_quiet(0);
  assert_int_equal(n, 1);
  const char *h3 = "{\"b\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[2,10]},"
                   "\"z\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,2]}}";
  assert_int_equal(ls_st_parse_header(h3, strlen(h3), 8 + strlen(h3) + 10, "f2", 1, &ts, &n), 0);
  assert_int_equal(n, 3);
  assert_string_equal(ts[0].name, "a");
  assert_int_equal(ts[0].offset, 8 + strlen(h1));
  assert_int_equal(ts[1].file, 1);
  assert_string_equal(ts[1].name, "b");
  assert_int_equal(ts[1].offset, 8 + strlen(h3) + 2);
  assert_string_equal(ts[2].name, "z");
  assert_int_equal(ts[2].ndim, 0);
  assert_int_equal(ts[2].numel, 1);
  free(ts);
}

/* ---- sharded checkpoints --------------------------------------------------------- */

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

/* Two shards written with the writer: shard 1 holds w1 (F32 (2,2)) and e (empty),
 * shard 2 holds w2 (BF16 (3,)). Values: w1 = 1..4, w2 = 0x3f80, 0x4000, 0x4040. */
static const float k_w1[4] = {1, 2, 3, 4};
static const uint16_t k_w2[3] = {0x3f80, 0x4000, 0x4040};

static void write_shards_to(const char *p1, const char *p2) {
  ls_st_wtensor_t t1[2] = {{.name = "w1", .dtype = LS_DT_F32, .ndim = 2, .shape = {2, 2}},
                           {.name = "e", .dtype = LS_DT_F32, .ndim = 1, .shape = {0}}};
  ls_st_wtensor_t t2[1] = {{.name = "w2", .dtype = LS_DT_BF16, .ndim = 1, .shape = {3}}};
  ls_st_writer_t w;
  assert_int_equal(ls_st_writer_open(&w, p1, t1, 2, "pt"), 0);
  assert_int_equal(ls_st_writer_put(&w, 0, 0, k_w1, 16), 0);
  assert_int_equal(ls_st_writer_close(&w), 0);
  assert_int_equal(ls_st_writer_open(&w, p2, t2, 1, NULL), 0);
  assert_int_equal(ls_st_writer_put(&w, 0, 0, k_w2, 6), 0);
  assert_int_equal(ls_st_writer_close(&w), 0);
}

static void write_shards(void) {
  char p1[4200], p2[4200];
  path_in(p1, sizeof p1, SHARD1);
  path_in(p2, sizeof p2, SHARD2);
  write_shards_to(p1, p2);
}

static void write_index(const char *rel, const char *weight_map_body) {
  char json[4096];
  snprintf(json, sizeof json,
           "{\n  \"metadata\": {\"total_size\": 22},\n  \"weight_map\": {%s}\n}\n",
           weight_map_body);
  write_bytes(rel, json, strlen(json));
}

#define WM_OK "\"w1\":\"" SHARD1 "\",\"e\":\"" SHARD1 "\",\"w2\":\"" SHARD2 "\""
#define INDEX "model.safetensors.index.json"

static void check_sharded_model(ls_st_model_t *m) {
  assert_int_equal(m->n_files, 2);
  assert_string_equal(m->files[0].name, SHARD1);
  assert_string_equal(m->files[1].name, SHARD2);
  assert_int_equal(m->n_tensors, 3);
  const ls_st_tensor_t *w1 = ls_st_find(m, "w1"), *w2 = ls_st_find(m, "w2");
  const ls_st_tensor_t *e = ls_st_find(m, "e");
  assert_true(w1 && w2 && e);
  assert_int_equal(w1->file, 0);
  assert_int_equal(w2->file, 1);
  assert_int_equal(e->nbytes, 0);
  float f[4];
  assert_int_equal(ls_st_read(m, w1, f), 0);
  assert_memory_equal(f, k_w1, 16);
  uint16_t b[3];
  assert_int_equal(ls_st_read(m, w2, b), 0);
  assert_memory_equal(b, k_w2, 6);
  float wf[3];
  ls_convert_to_f32(wf, b, LS_DT_BF16, 3);
  assert_true(wf[0] == 1.0f && wf[1] == 2.0f && wf[2] == 3.0f);
  assert_int_equal(m->bytes_read, 22);
}

static void test_sharded_ok(void **state) {
  write_shards();
  write_index(INDEX, WM_OK);
  /* an index takes precedence over a stray model.safetensors */
  write_bytes("model.safetensors", "junk", 4);
  ls_st_model_t m;
  expect_open_ok(&m);
  check_sharded_model(&m);
  ls_st_close(&m);
}

static void test_hf_cache_layout(void **state) {
  char p[4200], p1[4200], p2[4200];
  path_in(p, sizeof p, "blobs");
  assert_int_equal(mkdir(p, 0755), 0);
  path_in(p, sizeof p, "snapshots");
  assert_int_equal(mkdir(p, 0755), 0);
  path_in(p, sizeof p, "snapshots/rev");
  assert_int_equal(mkdir(p, 0755), 0);
  path_in(p1, sizeof p1, "blobs/0a1b2c3d4e5f");
  path_in(p2, sizeof p2, "blobs/9f8e7d6c5b4a");
  write_shards_to(p1, p2);
  path_in(p, sizeof p, "snapshots/rev/" SHARD1);
  assert_int_equal(symlink("../../blobs/0a1b2c3d4e5f", p), 0);
  path_in(p, sizeof p, "snapshots/rev/" SHARD2);
  assert_int_equal(symlink("../../blobs/9f8e7d6c5b4a", p), 0);
  write_index("snapshots/rev/" INDEX, WM_OK);
  path_in(p, sizeof p, "snapshots/rev");
  ls_st_model_t m;
  assert_int_equal(ls_st_open_dir(p, &m), 0);
  check_sharded_model(&m);
  assert_string_equal(m.dir, p);
  ls_st_close(&m);
  /* a dangling symlink is a missing shard */
  path_in(p, sizeof p, "blobs/9f8e7d6c5b4a");
  assert_int_equal(unlink(p), 0);
  path_in(p, sizeof p, "snapshots/rev");
  expect_open_fail_in(p, "cannot open shard listed in");
}

static void test_bad_index_dotdot(void **state) {
  write_shards();
  write_index(INDEX, "\"w1\":\"../x.safetensors\"," "\"e\":\"" SHARD1 "\",\"w2\":\"" SHARD2 "\"");
  expect_open_fail("weight_map entry 'w1' -> '../x.safetensors': shard name contains '/'");
  write_index(INDEX, "\"w1\":\"..\"," "\"e\":\"" SHARD1 "\",\"w2\":\"" SHARD2 "\"");
  expect_open_fail("shard name is not a file name");
  write_index(INDEX, "\"w1\":\"\"," "\"e\":\"" SHARD1 "\",\"w2\":\"" SHARD2 "\"");
  expect_open_fail("shard name is empty");
}

static void test_bad_index_absolute(void **state) {
  write_shards();
  write_index(INDEX, "\"w1\":\"/etc/passwd\"," "\"e\":\"" SHARD1 "\",\"w2\":\"" SHARD2 "\"");
  expect_open_fail("'/etc/passwd': shard name contains '/'");
}

static void test_bad_index_subdir(void **state) {
  write_shards();
  char p[4200];
  path_in(p, sizeof p, "sub");
  assert_int_equal(mkdir(p, 0755), 0);
  write_index(INDEX, "\"w1\":\"sub/x.safetensors\"," "\"e\":\"" SHARD1 "\",\"w2\":\"" SHARD2 "\"");
  expect_open_fail("'sub/x.safetensors': shard name contains '/'");
}

static void test_bad_index_missing_shard(void **state) {
  write_shards();
  write_index(INDEX, WM_OK ",\"w3\":\"model-00003-of-00003.safetensors\"");
  expect_open_fail("model-00003-of-00003.safetensors: cannot open shard listed in");
}

static void test_bad_index_tensor_not_in_shard(void **state) {
  write_shards();
  write_index(INDEX, WM_OK ",\"w9\":\"" SHARD2 "\"");
  expect_open_fail("tensor 'w9' is listed in the index for shard " SHARD2 " but " SHARD2
                   " does not contain it");
  /* listed for the wrong shard */
  write_index(INDEX, "\"w1\":\"" SHARD2 "\",\"e\":\"" SHARD1 "\",\"w2\":\"" SHARD2 "\"");
  expect_open_fail("tensor 'w1' is listed in the index for shard " SHARD2);
}

static void test_bad_index_tensor_not_listed(void **state) {
  write_shards();
  write_index(INDEX, "\"w1\":\"" SHARD1 "\",\"w2\":\"" SHARD2 "\"");
  expect_open_fail("shard " SHARD1 " contains tensor 'e' which");
}

static void test_bad_index_tensor_in_two_shards(void **state) {
  char p1[4200], p2[4200];
  path_in(p1, sizeof p1, SHARD1);
  path_in(p2, sizeof p2, SHARD2);
  write_shards_to(p1, p2);
  /* rewrite shard 2 so it also holds w1 */
  ls_st_wtensor_t t2[2] = {{.name = "w2", .dtype = LS_DT_BF16, .ndim = 1, .shape = {3}},
                           {.name = "w1", .dtype = LS_DT_F32, .ndim = 2, .shape = {2, 2}}};
  ls_st_writer_t w;
  assert_int_equal(ls_st_writer_open(&w, p2, t2, 2, NULL), 0);
  assert_int_equal(ls_st_writer_close(&w), 0);
  write_index(INDEX, WM_OK);
  expect_open_fail("tensor 'w1' is stored in two shards, " SHARD1 " and " SHARD2);
}

static void test_bad_index_duplicate_entry(void **state) {
  write_shards();
  write_index(INDEX, WM_OK ",\"w1\":\"" SHARD1 "\"");
  expect_open_fail("tensor 'w1' is listed twice in weight_map");
}

static void test_bad_index_json(void **state) {
  write_shards();
  write_text(INDEX, "{\"weight_map\": {");
  expect_open_fail("not a JSON object");
  write_text(INDEX, "{\"weight_map\": []}");
  expect_open_fail("missing or empty \"weight_map\"");
  write_text(INDEX, "{\"weight_map\": {\"w1\": 3}}");
  expect_open_fail("weight_map entry 'w1' is not a string");
}

static void test_bad_shard_content(void **state) {
  /* a bad shard behind a good index reports the shard */
  write_shards();
  write_index(INDEX, WM_OK);
  write_st(SHARD2, "{\"w2\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]}}", 8);
  expect_open_fail(SHARD2 ": 2 trailing bytes after the last tensor");
}

/* ---- main ---------------------------------------------------------------------- */

#define T(f) cmocka_unit_test_setup_teardown(f, setup_dir, teardown_dir)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_roundtrip),
      T(test_read_range_bounds),
      T(test_direct_reads),
      T(test_truncated_after_open),
      T(test_raw_valid_with_metadata),
      T(test_writer_rejects),
      T(test_f16_to_f32),
      T(test_bf16_f32_to_f32),
      T(test_f32_to_bf16),
      T(test_f32_to_f16),
      T(test_exhaustive_roundtrip),
      T(test_dtype_helpers),
      T(test_bad_no_model),
      T(test_bad_not_regular),
      T(test_bad_short_file),
      T(test_bad_hdr_len_past_eof),
      T(test_bad_hdr_len_zero),
      T(test_bad_hdr_len_over_cap),
      T(test_bad_not_json),
      T(test_bad_json_trailing),
      T(test_bad_nul_in_header),
      T(test_bad_not_object),
      T(test_bad_entry_not_object),
      T(test_bad_metadata_not_strings),
      T(test_bad_dtype),
      T(test_bad_missing_dtype),
      T(test_bad_span_mismatch),
      T(test_bad_shape_overflow),
      T(test_bad_negative_dim),
      T(test_bad_too_many_dims),
      T(test_bad_offsets_outside),
      T(test_bad_overlap),
      T(test_bad_hole),
      T(test_bad_trailing_bytes),
      T(test_bad_duplicate_name),
      T(test_bad_name_too_long),
      T(test_parse_header_direct),
      T(test_sharded_ok),
      T(test_hf_cache_layout),
      T(test_bad_index_dotdot),
      T(test_bad_index_absolute),
      T(test_bad_index_subdir),
      T(test_bad_index_missing_shard),
      T(test_bad_index_tensor_not_in_shard),
      T(test_bad_index_tensor_not_listed),
      T(test_bad_index_tensor_in_two_shards),
      T(test_bad_index_duplicate_entry),
      T(test_bad_index_json),
      T(test_bad_shard_content),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
