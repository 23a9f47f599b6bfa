/* plugin.c: the "cuda" registry entry as a proxy for the CUDA plugin
 * (liblayersweep-cuda.so, built from kernels/cuda). The plugin, and with it the CUDA
 * runtime, cuBLAS and NCCL, is mapped only when the cuda backend is asked for or auto
 * finds an NVIDIA driver: a CPU run maps none of them.
 *
 * Where it is looked for: $LS_CUDA_PLUGIN (a path; the emulator tests use it), else
 * next to the executable, then in ../lib and .. of the executable's directory (the build
 * tree: tests live one directory below the binary). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ls_common.h"
#include "registry.h"

#define PLUGIN_FILE "liblayersweep-cuda.so"

static const ls_backend_entry_t *g_entry;   /* the plugin's, once loaded */
static char g_path[PATH_MAX + 64];           /* where it was loaded from */
static char g_load_error[1536];              /* why it could not be, once tried */
static int g_tried;

const char *ls_backend_plugin_loaded(void) { return g_entry ? g_path : ""; }

/* An NVIDIA driver on this machine (native, or WSL's /dev/dxg); no library is loaded to
 * find out. */
static int driver_present(void) {
  return access("/proc/driver/nvidia/version", F_OK) == 0 || access("/dev/dxg", F_OK) == 0;
}

static int try_path(const char *path) {
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *e = dlerror();
    /* a missing file is not worth reporting when another place may have it */
    if (access(path, F_OK) == 0 || !g_load_error[0])
      snprintf(g_load_error, sizeof g_load_error, "%.1000s", e ? e : path);
    return 0;
  }
  typedef const ls_backend_entry_t *(*entry_fn)(int);
  entry_fn fn;
  *(void **)&fn = dlsym(h, "ls_plugin_entry");
  const ls_backend_entry_t *e = fn ? fn(LS_PLUGIN_ABI) : NULL;
  if (!e) {
    snprintf(g_load_error, sizeof g_load_error,
             "%s is not a layersweep %d backend plugin (%s); rebuild layersweep", path,
             LS_PLUGIN_ABI, fn ? "other plugin ABI" : "no ls_plugin_entry");
    dlclose(h);
    return 0;
  }
  g_entry = e;
  snprintf(g_path, sizeof g_path, "%s", path);
  return 1; /* stays loaded for the life of the process */
}

static int load(void) {
  if (g_entry || g_tried) return g_entry != NULL;
  g_tried = 1;
  const char *env = getenv("LS_CUDA_PLUGIN");
  if (env && *env) return try_path(env);
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) {
    snprintf(g_load_error, sizeof g_load_error, "cannot locate the executable to find %s",
             PLUGIN_FILE);
    return 0;
  }
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (slash) *slash = '\0';
  static const char *const where[] = {"%s/" PLUGIN_FILE, "%s/../lib/" PLUGIN_FILE,
                                      "%s/../" PLUGIN_FILE};
  for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, where[i], exe);
    if (try_path(path)) return 1;
  }
  char tail[sizeof g_load_error];
  snprintf(tail, sizeof tail, "%s", g_load_error);
  snprintf(g_load_error, sizeof g_load_error,
           "this layersweep has no CUDA plugin (%s beside %.200s: %.600s); build with the CUDA "
           "toolkit installed (nvcc, cuBLAS, NCCL), or set LS_CUDA_PLUGIN", PLUGIN_FILE, exe,
           tail);
  return 0;
}

/* Without a driver there is nothing to ask the plugin (and nothing to load: a machine
 * without a GPU never maps the CUDA libraries, even for --backend cuda); LS_CUDA_PLUGIN
 * loads it regardless (the emulator tests, and the test that the plugin loads). */
static int cuda_probe(int asked, char *why, size_t cap) {
  const char *env = getenv("LS_CUDA_PLUGIN");
  if (!(env && *env) && !driver_present()) {
    snprintf(why, cap, "no NVIDIA driver is loaded on this machine");
    return 0;
  }
  if (!load()) {
    snprintf(why, cap, "%s", g_load_error);
    return 0;
  }
  return g_entry->probe(asked, why, cap);
}

static ls_backend_t *cuda_create(const ls_backend_params_t *p) {
  if (!load()) {
    ls_error("--backend cuda: %s; or run with --backend cpu", g_load_error);
    return NULL;
  }
  return g_entry->create(p);
}

const ls_backend_entry_t ls_backend_cuda_plugin = {
    .name = "cuda",
    .caps = LS_BE_DEVICE_BCAST | LS_BE_BF16,
    .auto_priority = 10,
    .probe = cuda_probe,
    .create = cuda_create,
};
