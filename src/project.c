/* project.c: --project directions, read and validated on rank 0, broadcast (project.h). */
#include "project.h"

#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "ls_common.h"

/* the int64 attribute "layers" of object obj (n values into *out, malloc'd); 0 if absent */
static int layers_attr(hid_t obj, int64_t **out, int *n) {
  *out = NULL;
  *n = 0;
  if (H5Aexists(obj, "layers") <= 0) return 0;
  hid_t a = H5Aopen(obj, "layers", H5P_DEFAULT);
  if (a < 0) return 0;
  hid_t sp = H5Aget_space(a);
  const hssize_t m = H5Sget_simple_extent_npoints(sp);
  int rc = 0;
  if (m > 0 && m < (1 << 20)) {
    *out = malloc(sizeof(int64_t) * (size_t)m);
    if (*out && H5Aread(a, H5T_NATIVE_INT64, *out) >= 0) {
      *n = (int)m;
      rc = 1;
    } else {
      free(*out);
      *out = NULL;
    }
  }
  H5Sclose(sp);
  H5Aclose(a);
  return rc;
}

/* rank 0: the directions into p (dirs, sets); LS_ERR after one message */
static int read_dirs(const char *file, const char *dset, int H, int n_layers, const int *sel,
                     int n_sel, int final, ls_project_t *p) {
  H5E_auto2_t fn;
  void *data;
  H5Eget_auto2(H5E_DEFAULT, &fn, &data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  int rc = LS_ERR;
  hid_t f = -1, d = -1, sp = -1, g = -1;
  int64_t *lay = NULL;
  double *all = NULL;
  FILE *probe = fopen(file, "rb");
  if (!probe) {
    ls_error("--project: cannot read %s: %s", file, strerror(errno));
    goto done;
  }
  fclose(probe);
  if ((f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) {
    ls_error("--project: %s is not an HDF5 file", file);
    goto done;
  }
  if ((d = H5Dopen2(f, dset, H5P_DEFAULT)) < 0) {
    ls_error("--project: %s has no dataset %s", file, dset);
    goto done;
  }
  sp = H5Dget_space(d);
  const int nd = H5Sget_simple_extent_ndims(sp);
  hsize_t dims[3] = {0, 0, 0};
  if (nd == 2 || nd == 3) H5Sget_simple_extent_dims(sp, dims, NULL);
  const hsize_t n = nd == 3 ? dims[0] : 1, K = nd == 3 ? dims[1] : dims[0],
                W = nd == 3 ? dims[2] : dims[1];
  if ((nd != 2 && nd != 3) || W != (hsize_t)H || K < 1 || K > 65536 || n < 1 || n > 1u << 20) {
    ls_error("--project: %s %s must be [K, %d] or [layers, K, %d] (hidden_size %d, K <= 65536)",
             file, dset, H, H, H);
    goto done;
  }
  p->K = (int)K;
  p->per_layer = nd == 3;
  int n_lay = 0;
  if (p->per_layer) {
    /* which layers the rows are: the dataset's or its group's "layers", else every layer */
    if (!layers_attr(d, &lay, &n_lay)) {
      char gpath[4096];
      snprintf(gpath, sizeof gpath, "%s", dset);
      char *slash = strrchr(gpath, '/');
      if (slash && slash != gpath) {
        *slash = '\0';
        if ((g = H5Gopen2(f, gpath, H5P_DEFAULT)) >= 0) layers_attr(g, &lay, &n_lay);
      }
    }
    if (lay && (hsize_t)n_lay != n) {
      ls_error("--project: %s %s has %llu rows but its \"layers\" attribute lists %d layers", file,
               dset, (unsigned long long)n, n_lay);
      goto done;
    }
    if (!lay && n != (hsize_t)n_layers) {
      ls_error("--project: %s %s has %llu sets of directions: give one per model layer (%d), a "
               "\"layers\" attribute, or [K, %d] for every layer", file, dset,
               (unsigned long long)n, n_layers, H);
      goto done;
    }
    if (final) {
      ls_error("--project: %s %s has directions per layer, but final_norm (no layer) is among "
               "--hooks; drop final_norm or give [K, %d] directions", file, dset, H);
      goto done;
    }
  }
  const size_t per = (size_t)K * (size_t)H;
  all = malloc(sizeof(double) * per * (size_t)n);
  if (!all || H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, all) < 0) {
    ls_error("--project: cannot read %s from %s as numbers", dset, file);
    goto done;
  }
  for (size_t i = 0; i < per * (size_t)n; i++)
    if (!isfinite(all[i]) || fabs(all[i]) > 1.0e300) {
      ls_error("--project: %s %s has a non-finite value at element %zu", file,
               dset, i);
      goto done;
    }
  p->n_sets = p->per_layer ? n_sel : 1;
  p->dirs = ls_malloc(sizeof(double) * per * (size_t)(p->n_sets > 0 ? p->n_sets : 1), "projection");
  if (!p->dirs) goto done;
  for (int i = 0; i < p->n_sets; i++) {
    hsize_t row = 0;
    if (p->per_layer) { /* the row of selected layer sel[i] */
      int found = -1;
      for (hsize_t r = 0; r < n && found < 0; r++)
        if (lay ? lay[r] == sel[i] : (int)r == sel[i]) found = (int)r;
      if (found < 0) {
        ls_error("--project: %s %s has no directions for layer %d (its layers are those of its "
                 "\"layers\" attribute); select layers it covers", file, dset, sel[i]);
        goto done;
      }
      row = (hsize_t)found;
    }
    for (size_t e = 0; e < per; e++) p->dirs[(size_t)i * per + e] = all[row * per + e];
  }
  rc = LS_OK;
done:
  free(lay);
  free(all);
  if (g >= 0) H5Gclose(g);
  if (sp >= 0) H5Sclose(sp);
  if (d >= 0) H5Dclose(d);
  if (f >= 0) H5Fclose(f);
  H5Eset_auto2(H5E_DEFAULT, fn, data);
  return rc;
}

int ls_project_load(const char *spec, int H, int n_layers, const int *sel, int n_sel, int final,
                    MPI_Comm comm, ls_project_t *p) {
  memset(p, 0, sizeof *p);
  if (!spec || !*spec) return LS_OK;
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  const char *colon = strstr(spec, ":/");
  for (const char *c = colon; c; c = strstr(c + 1, ":/")) colon = c; /* the last ":/" */
  if (!colon || colon == spec) {
    if (rank == 0)
      ls_error("--project: \"%s\" is not FILE:DATASET (e.g. pass1.h5:/reductions/residual_post/"
               "pca_components)", spec);
    return LS_ERR;
  }
  snprintf(p->canon, sizeof p->canon, "%s", spec);
  snprintf(p->file, sizeof p->file, "%.*s", (int)(colon - spec), spec);
  int rc = rank == 0 ? read_dirs(p->file, colon + 1, H, n_layers, sel, n_sel, final, p) : LS_OK;
  if (ls_agree(rc, comm)) {
    ls_project_free(p);
    return LS_ERR;
  }
  int hdr[3] = {p->K, p->per_layer, p->n_sets};
  MPI_Bcast(hdr, 3, MPI_INT, 0, comm);
  p->K = hdr[0];
  p->per_layer = hdr[1];
  p->n_sets = hdr[2];
  const size_t per = (size_t)p->K * (size_t)H, total = per * (size_t)(p->n_sets > 0 ? p->n_sets : 1);
  if (rank != 0) p->dirs = ls_malloc(sizeof(double) * total, "projection");
  p->Dt = ls_malloc(sizeof(double) * total, "projection");
  p->set_of_layer = ls_malloc(sizeof(int) * (size_t)(n_layers > 0 ? n_layers : 1), "projection");
  rc = p->dirs && p->Dt && p->set_of_layer ? LS_OK : LS_ERR;
  if (ls_agree(rc, comm)) {
    ls_project_free(p);
    return LS_ERR;
  }
  ls_bcast_bytes(p->dirs, sizeof(double) * total, 0, comm);
  for (int L = 0; L < n_layers; L++) p->set_of_layer[L] = p->per_layer ? -1 : 0;
  for (int i = 0; i < n_sel && p->per_layer; i++) p->set_of_layer[sel[i]] = i;
  for (int s = 0; s < p->n_sets; s++) /* transposed: the directions as columns */
    for (int k = 0; k < p->K; k++)
      for (int j = 0; j < H; j++)
        p->Dt[(size_t)s * per + (size_t)j * p->K + k] = p->dirs[(size_t)s * per + (size_t)k * H + j];
  p->fp = ls_fnv1a(LS_FNV_INIT, p->dirs, sizeof(double) * total);
  return LS_OK;
}

void ls_project_free(ls_project_t *p) {
  free(p->set_of_layer);
  free(p->dirs);
  free(p->Dt);
  p->set_of_layer = NULL;
  p->dirs = NULL;
  p->Dt = NULL;
  p->K = 0;
}
