/* steer.c: --steer edits, read and validated on rank 0, broadcast (see steer.h). */
#include "steer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "ls_common.h"
#include "ls_json.h"

static int add_input(ls_steer_t *st, const char *path) {
  char **in = realloc(st->inputs, sizeof(char *) * (size_t)(st->n_inputs + 1));
  if (!in) return LS_ERR;
  st->inputs = in;
  st->inputs[st->n_inputs] = strdup(path);
  return st->inputs[st->n_inputs++] ? LS_OK : LS_ERR;
}

/* row `index` of dataset `dset` in file `file` (2-D [n, H], or 1-D [H] with index 0) */
static int vector_from_h5(const char *path, int k, const char *file, const char *dset, long index,
                          int H, double *v) {
  H5E_auto2_t fn;
  void *data;
  H5Eget_auto2(H5E_DEFAULT, &fn, &data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  int rc = LS_ERR;
  hid_t f = -1, d = -1, sp = -1, ms = -1;
  FILE *probe = fopen(file, "rb");
  if (!probe) {
    ls_error("%s: entry %d: cannot read the vector file %s: %s", path, k, file, strerror(errno));
    goto done;
  }
  fclose(probe);
  if ((f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) {
    ls_error("%s: entry %d: the vector file %s is not an HDF5 file", path, k, file);
    goto done;
  }
  if ((d = H5Dopen2(f, dset, H5P_DEFAULT)) < 0) {
    ls_error("%s: entry %d: %s has no dataset %s", path, k, file, dset);
    goto done;
  }
  sp = H5Dget_space(d);
  hsize_t dims[2] = {0, 0};
  const int nd = H5Sget_simple_extent_ndims(sp);
  if (nd < 1 || nd > 2) {
    ls_error("%s: entry %d: %s %s must be 1-D [%d] or 2-D [n, %d]", path, k, file, dset, H, H);
    goto done;
  }
  H5Sget_simple_extent_dims(sp, dims, NULL);
  const hsize_t rows = nd == 2 ? dims[0] : 1, width = nd == 2 ? dims[1] : dims[0];
  if (width != (hsize_t)H || index < 0 || (hsize_t)index >= rows) {
    ls_error("%s: entry %d: %s %s is [%llu, %llu]: it needs rows of hidden_size %d and an index "
             "in 0..%llu (got %ld)", path, k, file, dset, (unsigned long long)rows,
             (unsigned long long)width, H, (unsigned long long)rows - 1, index);
    goto done;
  }
  hsize_t start[2] = {(hsize_t)index, 0}, count[2] = {1, (hsize_t)H};
  if (nd == 1) { start[0] = 0; count[0] = (hsize_t)H; }
  hsize_t mdim = (hsize_t)H;
  ms = H5Screate_simple(1, &mdim, NULL);
  if (H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
      H5Dread(d, H5T_NATIVE_DOUBLE, ms, sp, H5P_DEFAULT, v) < 0) {
    ls_error("%s: entry %d: cannot read %s from %s as numbers", path, k, dset, file);
    goto done;
  }
  rc = LS_OK;
done:
  if (ms >= 0) H5Sclose(ms);
  if (sp >= 0) H5Sclose(sp);
  if (d >= 0) H5Dclose(d);
  if (f >= 0) H5Fclose(f);
  H5Eset_auto2(H5E_DEFAULT, fn, data);
  return rc;
}

static int parse_entry(const char *path, int k, const cJSON *e, int H, int n_layers,
                       ls_steer_t *st, ls_edit_t *ed) {
  static const int hooks[4] = {LS_HOOK_RESIDUAL_PRE, LS_HOOK_ATTN_OUT, LS_HOOK_MLP_OUT,
                               LS_HOOK_RESIDUAL_POST};
  if (!cJSON_IsObject(e)) {
    ls_error("%s: entry %d is not an object", path, k);
    return LS_ERR;
  }
  const cJSON *layer = cJSON_GetObjectItemCaseSensitive(e, "layer"),
              *hook = cJSON_GetObjectItemCaseSensitive(e, "hook"),
              *op = cJSON_GetObjectItemCaseSensitive(e, "op"),
              *alpha = cJSON_GetObjectItemCaseSensitive(e, "alpha"),
              *vec = cJSON_GetObjectItemCaseSensitive(e, "vector"),
              *pos = cJSON_GetObjectItemCaseSensitive(e, "positions");
  for (const cJSON *c = e->child; c; c = c->next) {
    static const char *const keys[] = {"layer", "hook", "op", "alpha", "vector", "positions", NULL};
    int known = 0;
    for (int i = 0; keys[i]; i++) known |= strcmp(c->string, keys[i]) == 0;
    if (!known) {
      char shown[64];
      ls_printable(shown, sizeof shown, c->string);
      ls_error("%s: entry %d: unknown key \"%s\" (layer, hook, op, alpha, vector, positions)",
               path, k, shown);
      return LS_ERR;
    }
  }
  if (!cJSON_IsNumber(layer) || layer->valuedouble != (double)(int)layer->valuedouble) {
    ls_error("%s: entry %d: \"layer\" must be an integer", path, k);
    return LS_ERR;
  }
  ed->layer = layer->valueint < 0 ? layer->valueint + n_layers : layer->valueint;
  if (ed->layer < 0 || ed->layer >= n_layers) {
    ls_error("%s: entry %d: layer %d is out of range for a model with %d layers", path, k,
             layer->valueint, n_layers);
    return LS_ERR;
  }
  ed->hook = -1;
  for (int i = 0; i < 4 && cJSON_IsString(hook); i++)
    if (strcmp(hook->valuestring, ls_hook_name(hooks[i])) == 0) ed->hook = hooks[i];
  if (ed->hook < 0) {
    ls_error("%s: entry %d: \"hook\" must be residual_pre, attn_out, mlp_out or residual_post",
             path, k);
    return LS_ERR;
  }
  if (!cJSON_IsString(op) || (strcmp(op->valuestring, "add") && strcmp(op->valuestring, "ablate"))) {
    ls_error("%s: entry %d: \"op\" must be \"add\" or \"ablate\"", path, k);
    return LS_ERR;
  }
  ed->ablate = strcmp(op->valuestring, "ablate") == 0;
  double a = 1.0;
  if (alpha && (!cJSON_IsNumber(alpha) || !isfinite(alpha->valuedouble))) {
    ls_error("%s: entry %d: \"alpha\" must be a finite number", path, k);
    return LS_ERR;
  }
  if (alpha) a = alpha->valuedouble;
  ed->alpha = (float)a;
  if (pos && (!cJSON_IsString(pos) || (strcmp(pos->valuestring, "all") && strcmp(pos->valuestring, "last")))) {
    ls_error("%s: entry %d: \"positions\" must be \"all\" or \"last\"", path, k);
    return LS_ERR;
  }
  ed->last = pos && strcmp(pos->valuestring, "last") == 0;
  double *v = calloc((size_t)H, sizeof(double));
  ed->v = calloc((size_t)H, sizeof(float));
  if (!v || !ed->v) { free(v); return LS_ERR; }
  int rc = LS_OK;
  if (cJSON_IsArray(vec)) {
    if (cJSON_GetArraySize(vec) != H) {
      ls_error("%s: entry %d: \"vector\" has %d values, the model's hidden_size is %d", path, k,
               cJSON_GetArraySize(vec), H);
      rc = LS_ERR;
    }
    int i = 0;
    for (const cJSON *x = vec->child; x && rc == LS_OK; x = x->next, i++) {
      if (!cJSON_IsNumber(x)) {
        ls_error("%s: entry %d: vector[%d] is not a number", path, k, i);
        rc = LS_ERR;
      } else {
        v[i] = x->valuedouble;
      }
    }
  } else if (cJSON_IsObject(vec)) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(vec, "file"),
                *ds = cJSON_GetObjectItemCaseSensitive(vec, "dataset"),
                *ix = cJSON_GetObjectItemCaseSensitive(vec, "index");
    if (!cJSON_IsString(f) || !cJSON_IsString(ds) || (ix && !cJSON_IsNumber(ix))) {
      ls_error("%s: entry %d: \"vector\" must be a list or {\"file\": ..., \"dataset\": ..., "
               "\"index\": i}", path, k);
      rc = LS_ERR;
    } else {
      /* a relative file name is relative to the JSON file's directory */
      char file[4200];
      const char *slash = strrchr(path, '/');
      if (f->valuestring[0] != '/' && slash)
        snprintf(file, sizeof file, "%.*s/%s", (int)(slash - path), path, f->valuestring);
      else
        snprintf(file, sizeof file, "%s", f->valuestring);
      rc = add_input(st, file);
      if (rc == LS_OK)
        rc = vector_from_h5(path, k, file, ds->valuestring, ix ? (long)ix->valuedouble : 0, H, v);
    }
  } else {
    ls_error("%s: entry %d: \"vector\" is missing (a list of %d numbers, or a file reference)",
             path, k, H);
    rc = LS_ERR;
  }
  double norm = 0;
  for (int i = 0; i < H && rc == LS_OK; i++) {
    if (!isfinite(v[i])) {
      ls_error("%s: entry %d: vector[%d] is not finite", path, k, i);
      rc = LS_ERR;
    }
    norm += v[i] * v[i];
  }
  norm = sqrt(norm);
  if (rc == LS_OK && ed->ablate && !(norm > 0)) {
    ls_error("%s: entry %d: cannot ablate along a zero vector", path, k);
    rc = LS_ERR;
  }
  if (rc == LS_OK)
    for (int i = 0; i < H; i++) ed->v[i] = (float)(ed->ablate ? v[i] / norm : v[i]);
  free(v);
  return rc;
}

static int parse(const char *path, int H, int n_layers, ls_steer_t *st) {
  char *text = ls_read_text_file(path, (size_t)64 << 20, NULL);
  if (!text) return LS_ERR;
  int rc = add_input(st, path);
  cJSON *root = cJSON_ParseWithOpts(text, NULL, 1);
  free(text);
  if (!root || !cJSON_IsArray(root)) {
    ls_error("%s: --steer wants a JSON list of edits ({\"layer\", \"hook\", \"op\", \"alpha\", "
             "\"vector\", \"positions\"})", path);
    cJSON_Delete(root);
    return LS_ERR;
  }
  const char *dup = ls_json_duplicate_key(root);
  if (dup) {
    char shown[64];
    ls_printable(shown, sizeof shown, dup);
    ls_error("%s: key \"%s\" is given twice in one object; keep one", path, shown);
    cJSON_Delete(root);
    return LS_ERR;
  }
  st->n = cJSON_GetArraySize(root);
  st->e = calloc((size_t)(st->n > 0 ? st->n : 1), sizeof *st->e);
  cJSON *canon = cJSON_CreateArray();
  if (!st->e || !canon) rc = LS_ERR;
  int k = 0;
  for (const cJSON *e = root->child; e && rc == LS_OK; e = e->next, k++) {
    rc = parse_entry(path, k, e, H, n_layers, st, &st->e[k]);
    if (rc != LS_OK) break;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "layer", st->e[k].layer);
    cJSON_AddStringToObject(o, "hook", ls_hook_name(st->e[k].hook));
    cJSON_AddStringToObject(o, "op", st->e[k].ablate ? "ablate" : "add");
    cJSON_AddNumberToObject(o, "alpha", st->e[k].alpha);
    cJSON_AddStringToObject(o, "positions", st->e[k].last ? "last" : "all");
    cJSON_AddNumberToObject(o, "vector_row", k); /* the vectors: /steer/vectors */
    cJSON_AddItemToArray(canon, o);
  }
  if (rc == LS_OK) st->canon = cJSON_PrintUnformatted(canon);
  cJSON_Delete(canon);
  cJSON_Delete(root);
  return rc == LS_OK && st->canon ? LS_OK : LS_ERR;
}

int ls_steer_load(const char *path, int hidden, int n_layers, MPI_Comm comm, ls_steer_t *st) {
  memset(st, 0, sizeof *st);
  if (!path || !*path) return LS_OK;
  int rank;
  MPI_Comm_rank(comm, &rank);
  int rc = rank == 0 ? parse(path, hidden, n_layers, st) : LS_OK;
  if (ls_agree(rc, comm)) {
    ls_steer_free(st);
    return LS_ERR;
  }
  /* every rank gets the edits (and the canonical text for the output) */
  MPI_Bcast(&st->n, 1, MPI_INT, 0, comm);
  uint64_t len = rank == 0 ? strlen(st->canon) + 1 : 0;
  MPI_Bcast(&len, 1, MPI_UINT64_T, 0, comm);
  if (rank != 0) {
    st->e = calloc((size_t)(st->n > 0 ? st->n : 1), sizeof *st->e);
    st->canon = malloc(len);
  }
  rc = st->e && st->canon ? LS_OK : LS_ERR;
  for (int k = 0; k < st->n && rc == LS_OK; k++) {
    float *keep = st->e[k].v;
    MPI_Bcast(&st->e[k], sizeof st->e[k], MPI_BYTE, 0, comm);
    st->e[k].v = rank == 0 ? keep : malloc(sizeof(float) * (size_t)hidden);
    if (!st->e[k].v) rc = LS_ERR;
    else MPI_Bcast(st->e[k].v, hidden, MPI_FLOAT, 0, comm);
  }
  if (rc == LS_OK) ls_bcast_bytes(st->canon, len, 0, comm);
  if (ls_agree(rc, comm)) {
    ls_steer_free(st);
    return LS_ERR;
  }
  return LS_OK;
}

void ls_steer_free(ls_steer_t *st) {
  for (int k = 0; k < st->n && st->e; k++) free(st->e[k].v);
  free(st->e);
  free(st->canon);
  for (int i = 0; i < st->n_inputs; i++) free(st->inputs[i]);
  free(st->inputs);
  memset(st, 0, sizeof *st);
}

int ls_steer_at_layer(const ls_steer_t *st, int layer) {
  for (int k = 0; k < st->n; k++)
    if (st->e[k].layer == layer) return 1;
  return 0;
}
