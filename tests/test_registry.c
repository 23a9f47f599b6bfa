/* test_registry.c: the backend registry (kernels/registry.h): the built-in entries and
 * their capabilities, registration, and the weight broadcast every created backend
 * gets: the backend's own when it has one (LS_BE_DEVICE_BCAST set), else the MPI one
 * into host memory, which moves the bytes of rank 0's buffer to every rank. Run alone
 * and under mpirun -np 2 (mpi.test_registry.np2). */
#include <mpi.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backend.h"
#include "ls_common.h"
#include "ops_cpu.h"
#include "registry.h"

static int rank, size;

static void test_builtins(void **state) {
  const ls_backend_entry_t *cpu = ls_backend_lookup("cpu"), *cuda = ls_backend_lookup("cuda");
  assert_non_null(cpu);
  assert_non_null(cuda);
  assert_null(ls_backend_lookup("nope"));
  assert_null(ls_backend_lookup(NULL));
  assert_int_equal(cpu->caps, LS_BE_DETERMINISTIC | LS_BE_HOST_MEMORY);
  assert_true(cuda->caps & LS_BE_BF16);
  assert_true(cuda->caps & LS_BE_DEVICE_BCAST);
  assert_false(cuda->caps & LS_BE_HOST_MEMORY);
  /* auto prefers the GPU when it is usable */
  assert_true(cuda->auto_priority > cpu->auto_priority);
  char why[256] = "";
  assert_true(cpu->probe(0, why, sizeof why) > 0);
  assert_non_null(strstr(ls_backend_names(), "cpu"));
  assert_non_null(strstr(ls_backend_names(), "cuda"));
  int seen = 0;
  for (int i = 0; i < ls_backend_count(); i++) seen += ls_backend_at(i) == cpu || ls_backend_at(i) == cuda;
  assert_int_equal(seen, 2);
  assert_null(ls_backend_at(ls_backend_count()));
}

/* ---- a backend with a broadcast of its own: the CPU backend with a counting bcast ---- */
static int n_start, n_wait;
static ls_backend_iface_t own_iface;

static int own_start(ls_backend_t *be, int slot, void *dst, const void *src, size_t bytes) {
  n_start++;
  if (src) memcpy(dst, src, bytes);
  return LS_OK;
}
static int own_wait(ls_backend_t *be, int slot) {
  n_wait++;
  return LS_OK;
}
static const ls_bcast_iface_t own_bcast = {own_start, own_wait, NULL};

static int own_probe(int asked, char *why, size_t cap) { return 1; }
static ls_backend_t *own_create(const ls_backend_params_t *p) {
  ls_backend_t *be = ls_backend_cpu_new(1, 16);
  if (!be) return NULL;
  own_iface = *be->iface;
  own_iface.name = "own";
  own_iface.bcast = &own_bcast;
  be->iface = &own_iface;
  return be;
}
static const ls_backend_entry_t own_entry = {"own", LS_BE_HOST_MEMORY, -1, own_probe, own_create,
                                             NULL};

static void test_register(void **state) {
  assert_int_equal(ls_backend_register(&own_entry), LS_OK);
  assert_ptr_equal(ls_backend_lookup("own"), &own_entry);
  /* a name is taken once */
  assert_int_equal(ls_backend_register(&own_entry), LS_ERR);
  assert_int_equal(ls_backend_register(ls_backend_lookup("cpu")), LS_ERR);
  const ls_backend_params_t p = {1, 16, 0, MPI_COMM_SELF, 0};
  ls_backend_t *be = ls_backend_create(&own_entry, &p);
  assert_non_null(be);
  /* its own broadcast is used, and the capability says so */
  assert_ptr_equal(be->bcast, &own_bcast);
  assert_true(be->caps & LS_BE_DEVICE_BCAST);
  float src[4] = {1, 2, 3, 4}, dst[4] = {0};
  assert_int_equal(be->bcast->start(be, 1, dst, src, sizeof src), LS_OK);
  assert_int_equal(be->bcast->wait(be, 1), LS_OK);
  assert_int_equal(n_start, 1);
  assert_int_equal(n_wait, 1);
  assert_memory_equal(dst, src, sizeof src);
  ls_backend_free(be);
}

/* The MPI broadcast: rank 0's bytes reach every rank's receive buffer, through both
 * slots at once, for sizes from 0 bytes up; rank 0's dst may differ from its src. */
static void test_mpi_bcast(void **state) {
  const ls_backend_entry_t *cpu = ls_backend_lookup("cpu");
  const ls_backend_params_t p = {1, 16, 0, MPI_COMM_WORLD, 0};
  ls_backend_t *be = ls_backend_create(cpu, &p);
  assert_non_null(be);
  assert_false(be->caps & LS_BE_DEVICE_BCAST);
  assert_true(be->host_visible);
  assert_non_null(be->bcast);
  assert_non_null(be->bcast->progress);
  static const size_t sizes[] = {0, 1, 7, 4096, 1 << 20};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    const size_t n = sizes[k];
    unsigned char *src = malloc(n + 1), *d0 = malloc(n + 1), *d1 = malloc(n + 1);
    assert_true(src && d0 && d1);
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(i * 131u + k);
    memset(d0, 0xee, n + 1);
    memset(d1, 0xee, n + 1);
    /* two broadcasts in flight, one per slot, as the weight pipeline posts them */
    assert_int_equal(be->bcast->start(be, 0, d0, rank == 0 ? src : NULL, n), LS_OK);
    assert_int_equal(be->bcast->start(be, 1, d1, rank == 0 ? src : NULL, n), LS_OK);
    be->bcast->progress(be);
    assert_int_equal(be->bcast->wait(be, 1), LS_OK);
    assert_int_equal(be->bcast->wait(be, 0), LS_OK);
    if (n) {
      assert_memory_equal(d0, src, n);
      assert_memory_equal(d1, src, n);
    }
    assert_int_equal(d0[n], 0xee); /* nothing past the end */
    assert_int_equal(d1[n], 0xee);
    free(src);
    free(d0);
    free(d1);
  }
  ls_backend_free(be);
}

int main(int argc, char **argv) {
  int provided;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_builtins),
      cmocka_unit_test(test_register),
      cmocka_unit_test(test_mpi_bcast),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  MPI_Finalize();
  return failed ? 1 : 0;
}
