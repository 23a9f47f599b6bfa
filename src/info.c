/* info.c: `layersweep info FILE [--plot FILE.svg]`: what an output file holds (status,
 * layers complete, datasets and shapes, the command, the profile), read with serial HDF5,
 * and a per-layer picture of where the time went. Exit 0 only for a complete file. */
#include "info.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "guard.h"
#include "ls_common.h"

/* ---- reading -------------------------------------------------------------------------------- */
static int attr_str(hid_t obj, const char *name, char *out, size_t cap) {
  out[0] = '\0';
  if (H5Aexists(obj, name) <= 0) return LS_ERR;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT), t = H5Aget_type(a);
  int rc = LS_ERR;
  if (H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t)) {
    size_t n = H5Tget_size(t);
    char *buf = ls_calloc(n + 1, 1, "attribute");
    if (buf && H5Aread(a, t, buf) >= 0) {
      snprintf(out, cap, "%s", buf);
      rc = LS_OK;
    }
    free(buf);
  }
  H5Tclose(t);
  H5Aclose(a);
  return rc;
}

/* an int64 attribute array (malloc'd, count in *n); NULL when absent */
static int64_t *attr_i64(hid_t obj, const char *name, int *n) {
  *n = 0;
  if (H5Aexists(obj, name) <= 0) return NULL;
  hid_t a = H5Aopen(obj, name, H5P_DEFAULT), sp = H5Aget_space(a);
  hssize_t k = H5Sget_simple_extent_npoints(sp);
  int64_t *v = ls_calloc((size_t)(k > 0 ? k : 1), sizeof *v, "attribute");
  if (v && k > 0 && H5Aread(a, H5T_NATIVE_INT64, v) < 0) k = 0;
  H5Sclose(sp);
  H5Aclose(a);
  *n = (int)(k > 0 ? k : 0);
  return v;
}

typedef struct {
  FILE *out;
} walk_t;

static herr_t list_dataset(hid_t loc, const char *name, const H5O_info_t *oi, void *op) {
  walk_t *w = op;
  if (oi->type != H5O_TYPE_DATASET) return 0;
  hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
  if (d < 0) return 0;
  hid_t sp = H5Dget_space(d), t = H5Dget_type(d);
  hsize_t dims[8];
  int nd = H5Sget_simple_extent_ndims(sp);
  if (nd > 8) nd = 8;
  H5Sget_simple_extent_dims(sp, dims, NULL);
  const char *kind = "?";
  char kbuf[32];
  if (H5Tget_class(t) == H5T_FLOAT) snprintf(kbuf, sizeof kbuf, "float%zu", 8 * H5Tget_size(t)), kind = kbuf;
  else if (H5Tget_class(t) == H5T_INTEGER) snprintf(kbuf, sizeof kbuf, "int%zu", 8 * H5Tget_size(t)), kind = kbuf;
  else if (H5Tget_class(t) == H5T_STRING) kind = "string";
  char shape[160] = "";
  for (int i = 0; i < nd; i++)
    snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%llu", i ? ", " : "",
             (unsigned long long)dims[i]);
  if (strcmp(name, ".") != 0) fprintf(w->out, "  /%-28s %-8s [%s]\n", name, kind, shape);
  H5Tclose(t);
  H5Sclose(sp);
  H5Dclose(d);
  return 0;
}

/* /profile/<field> [ranks, layers] -> max over ranks per layer (malloc'd), layer count */
static double *profile_max(hid_t f, const char *field, int *n_layers) {
  char name[64];
  snprintf(name, sizeof name, "/profile/%s", field);
  *n_layers = 0;
  if (H5Lexists(f, "/profile", H5P_DEFAULT) <= 0 || H5Lexists(f, name, H5P_DEFAULT) <= 0) return NULL;
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(d);
  hsize_t dims[2] = {0, 0};
  int nd = H5Sget_simple_extent_ndims(sp);
  double *all = NULL, *mx = NULL;
  if (nd == 2) {
    H5Sget_simple_extent_dims(sp, dims, NULL);
    all = ls_calloc((size_t)(dims[0] * dims[1] + 1), sizeof(double), "profile");
    mx = ls_calloc((size_t)(dims[1] + 1), sizeof(double), "profile");
    if (all && mx && H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, all) >= 0) {
      for (hsize_t L = 0; L < dims[1]; L++)
        for (hsize_t r = 0; r < dims[0]; r++)
          if (all[r * dims[1] + L] > mx[L]) mx[L] = all[r * dims[1] + L];
      *n_layers = (int)dims[1];
    }
  }
  free(all);
  H5Sclose(sp);
  H5Dclose(d);
  if (*n_layers == 0) { free(mx); mx = NULL; }
  return mx;
}

/* ---- the picture ------------------------------------------------------------------------------ */
#define N_PHASES 6
static const char *const k_phase[N_PHASES] = {"read_wait_s", "bcast_wait_s", "load_s",
                                              "forward_s", "hooks_s", "write_s"};
static const char *const k_label[N_PHASES] = {"read wait", "broadcast wait", "load (convert)",
                                              "forward", "hooks / pooling", "write wait"};
static const char *const k_color[N_PHASES] = {"#d62728", "#ff7f0e", "#bcbd22", "#1f77b4",
                                              "#17becf", "#9467bd"};

static int write_svg(const char *path, double *const *ph, int nl, const char *title) {
  FILE *f = fopen(path, "w");
  if (!f) {
    ls_error("%s: cannot write the plot: check the directory exists and is writable", path);
    return LS_ERR;
  }
  double tmax = 0;
  for (int L = 0; L < nl; L++) {
    double t = 0;
    for (int p = 0; p < N_PHASES; p++) t += ph[p] ? ph[p][L] : 0;
    if (t > tmax) tmax = t;
  }
  if (tmax <= 0) tmax = 1;
  const int W = 900, Hh = 420, left = 70, right = 190, top = 40, bottom = 50;
  const double pw = W - left - right, phh = Hh - top - bottom, bw = pw / (nl > 0 ? nl : 1);
  fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
          "font-family=\"sans-serif\" font-size=\"12\">\n", W, Hh);
  fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
  fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"14\">", left);
  for (const char *c = title; *c; c++) /* XML text: escape the five specials */
    fputs(*c == '<' ? "&lt;" : *c == '>' ? "&gt;" : *c == '&' ? "&amp;" : *c == '"' ? "&quot;"
          : *c == '\'' ? "&apos;" : (char[2]){*c, 0}, f);
  fprintf(f, "</text>\n");
  for (int k = 0; k <= 4; k++) { /* y axis: seconds per layer (max over ranks) */
    double y = top + phh - phh * k / 4.0;
    fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, y,
            left + pw, y);
    fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3g s</text>\n", left - 6, y + 4,
            tmax * k / 4.0);
  }
  for (int L = 0; L < nl; L++) {
    double y = top + phh;
    for (int p = 0; p < N_PHASES; p++) {
      const double v = ph[p] ? ph[p][L] : 0, h = phh * v / tmax;
      if (h <= 0) continue;
      y -= h;
      fprintf(f, "<rect x=\"%.1f\" y=\"%.2f\" width=\"%.1f\" height=\"%.2f\" fill=\"%s\">"
              "<title>layer %d %s %.4f s</title></rect>\n", left + L * bw + bw * 0.1, y,
              bw * 0.8, h, k_color[p], L, k_label[p], v);
    }
    if (nl <= 40 || L % (nl / 20 + 1) == 0)
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n",
              left + (L + 0.5) * bw, top + phh + 16, L);
  }
  fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">layer (bars: seconds, max over "
          "ranks)</text>\n", left + pw / 2, Hh - 12);
  for (int p = 0; p < N_PHASES; p++) {
    fprintf(f, "<rect x=\"%.1f\" y=\"%d\" width=\"12\" height=\"12\" fill=\"%s\"/>", left + pw + 20,
            top + 20 * p, k_color[p]);
    fprintf(f, "<text x=\"%.1f\" y=\"%d\">%s</text>\n", left + pw + 38, top + 20 * p + 11,
            k_label[p]);
  }
  fprintf(f, "</svg>\n");
  if (fclose(f) != 0) {
    ls_error("%s: writing the plot failed", path);
    return LS_ERR;
  }
  return LS_OK;
}

/* ---- the command -------------------------------------------------------------------------------- */
int ls_info_main(const char *path, const char *plot, int force) {
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  if (plot) { /* never write over the file being read (or anything else without --force) */
    ls_guard_t g = {0};
    int rc = ls_guard_add(&g, path) || ls_guard_check_file(&g, plot, "--plot");
    ls_guard_free(&g);
    if (rc) return 2;
    if (!force && access(plot, F_OK) == 0) {
      ls_error("%s: the plot file exists; pass --force to overwrite it or choose another --plot",
               plot);
      return 2;
    }
  }
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    ls_error("%s: not an HDF5 file layersweep can read (missing, unreadable or not HDF5)", path);
    return 2;
  }
  char status[32], arch[128], model[4096], data[4096], hooks[256], pool[32], cmd[8192],
      fmt[32], ver[64], dtype[32], backend[32];
  if (attr_str(f, "status", status, sizeof status)) {
    ls_error("%s: no \"status\" attribute: not a layersweep output file", path);
    H5Fclose(f);
    return 2;
  }
  attr_str(f, "model_architecture", arch, sizeof arch);
  attr_str(f, "model_path", model, sizeof model);
  attr_str(f, "data_path", data, sizeof data);
  attr_str(f, "hooks", hooks, sizeof hooks);
  attr_str(f, "pool", pool, sizeof pool);
  attr_str(f, "command", cmd, sizeof cmd);
  attr_str(f, "format_version", fmt, sizeof fmt);
  attr_str(f, "layersweep_version", ver, sizeof ver);
  attr_str(f, "compute_dtype", dtype, sizeof dtype);
  attr_str(f, "backend", backend, sizeof backend);
  int nr = 0, nm = 0, nsel = 0;
  int64_t *ranks = attr_i64(f, "n_ranks", &nr), *marks = attr_i64(f, "layers_completed", &nm);
  int64_t *sel = NULL;
  char first_hook[64] = "";
  sscanf(hooks, "%63[^,]", first_hook);
  if (first_hook[0] && strcmp(first_hook, "final_norm") != 0) {
    char name[80];
    snprintf(name, sizeof name, "/%s", first_hook);
    if (H5Lexists(f, name, H5P_DEFAULT) > 0) {
      hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
      sel = attr_i64(d, "layers", &nsel);
      H5Dclose(d);
    }
  }
  int done = 0;
  for (int i = 0; i < nm; i++) done += marks[i] >= 0;
  const int complete = strcmp(status, "complete") == 0;
  printf("file:     %s\n", path);
  printf("status:   %s%s\n", status, complete ? "" : " (not a finished result; --resume continues it)");
  printf("format:   %s (layersweep %s)\n", fmt, ver);
  printf("model:    %s (%s), %s on %s, %lld rank(s)\n", model, arch, dtype, backend,
         (long long)(nr > 0 ? ranks[0] : 0));
  printf("data:     %s\n", data);
  printf("hooks:    %s; pool %s\n", hooks, pool);
  printf("layers:   %d selected, %d complete", nsel ? nsel : nm, done);
  if (!complete && nm > 0) {
    printf(" (missing:");
    int shown = 0;
    for (int i = 0; i < nm && shown < 16; i++)
      if (marks[i] < 0) printf(" %lld", (long long)(sel && i < nsel ? sel[i] : i)), shown++;
    printf("%s)", done + shown < nm ? " ..." : "");
  }
  printf("\ncommand:  %s\ndatasets:\n", cmd);
  walk_t w = {stdout};
  H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, list_dataset, &w);
  double *ph[N_PHASES] = {0};
  int nl = 0;
  for (int p = 0; p < N_PHASES; p++) {
    int n = 0;
    ph[p] = profile_max(f, k_phase[p], &n);
    if (n > nl) nl = n;
  }
  if (nl > 0) {
    printf("profile:  seconds summed over %d layers (max over ranks per layer):", nl);
    for (int p = 0; p < N_PHASES; p++) {
      double t = 0;
      for (int L = 0; L < nl && ph[p]; L++) t += ph[p][L];
      printf("%s %s %.3f", p ? "," : "", k_label[p], t);
    }
    printf("\n");
  }
  int rc = complete ? 0 : 1;
  if (plot) {
    char title[512];
    snprintf(title, sizeof title, "%s: time per layer (%s, %s)", path, arch, backend);
    if (nl == 0) {
      ls_error("%s: no /profile in the file to plot (a run that stopped before its end writes "
               "none)", path);
      rc = 2;
    } else if (write_svg(plot, ph, nl, title)) {
      rc = 2;
    } else {
      printf("plot:     %s\n", plot);
    }
  }
  for (int p = 0; p < N_PHASES; p++) free(ph[p]);
  free(ranks);
  free(marks);
  free(sel);
  H5Fclose(f);
  return rc;
}
