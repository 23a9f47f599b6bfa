/* h5out.c: collective parallel-HDF5 output (see h5out.h). */
#include "h5out.h"

#include <hdf5_hl.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ls_common.h"

#define LS_H5_TRY(expr, what)                                                        \
  do {                                                                             \
    if ((expr) < 0) {                                                              \
      ls_error("%s: HDF5 %s failed (%s:%d); check free space and permissions", h->path, \
               what, __FILE__, __LINE__);                                          \
      goto fail;                                                                   \
    }                                                                              \
  } while (0)

static int open_common(ls_h5out_t *h, const char *path, MPI_Comm comm, int create, int force) {
  memset(h, 0, sizeof *h);
  h->file = h->dxpl = H5I_INVALID_HID;
  snprintf(h->path, sizeof h->path, "%s", path);
  int rank;
  MPI_Comm_rank(comm, &rank);
  int exists = 0;
  if (rank == 0) exists = access(path, F_OK) == 0;
  MPI_Bcast(&exists, 1, MPI_INT, 0, comm);
  if (create && exists && !force) {
    if (rank == 0)
      ls_error("%s: output file exists; pass --force to overwrite it or choose another --out",
               path);
    return LS_ERR;
  }
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* errors are reported by us, once */
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
  H5Pset_all_coll_metadata_ops(fapl, 1);
  H5Pset_coll_metadata_write(fapl, 1);
  if (create)
    h->file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  else
    h->file = H5Fopen(path, H5F_ACC_RDWR, fapl);
  H5Pclose(fapl);
  if (h->file < 0) {
    if (rank == 0)
      ls_error("%s: cannot %s the HDF5 output file; check that the directory exists and is "
               "writable", path, create ? "create" : "open");
    return LS_ERR;
  }
  h->dxpl = H5Pcreate(H5P_DATASET_XFER);
  H5Pset_dxpl_mpio(h->dxpl, H5FD_MPIO_COLLECTIVE);
  return LS_OK;
}

int ls_h5out_create(ls_h5out_t *h, const char *path, MPI_Comm comm, int force) {
  return open_common(h, path, comm, 1, force);
}

int ls_h5out_open(ls_h5out_t *h, const char *path, MPI_Comm comm) {
  return open_common(h, path, comm, 0, 0);
}

int ls_h5out_flush(ls_h5out_t *h) {
  LS_H5_TRY(H5Fflush(h->file, H5F_SCOPE_GLOBAL), "flush");
  return LS_OK;
fail:
  return LS_ERR;
}

int ls_h5out_close(ls_h5out_t *h) {
  int rc = LS_OK;
  if (h->dxpl >= 0) H5Pclose(h->dxpl);
  if (h->file >= 0 && H5Fclose(h->file) < 0) {
    ls_error("%s: closing the HDF5 file failed; the disk may be full", h->path);
    rc = LS_ERR;
  }
  h->file = h->dxpl = H5I_INVALID_HID;
  return rc;
}

/* ---- attributes ---------------------------------------------------------------------- */
/* Create or overwrite an attribute. An existing attribute of the same type size and
 * element count is overwritten in place (no object-header reallocation), so markers
 * updated during a sweep never leave the file's metadata half-changed. */
static int write_attr(ls_h5out_t *h, const char *obj_path, const char *name, hid_t type,
                      hid_t space, const void *buf) {
  hid_t obj = H5I_INVALID_HID, attr = H5I_INVALID_HID;
  LS_H5_TRY(obj = H5Oopen(h->file, obj_path, H5P_DEFAULT), "open object for attribute");
  if (H5Aexists(obj, name) > 0) {
    attr = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = attr >= 0 ? H5Aget_type(attr) : H5I_INVALID_HID;
    hid_t sp = attr >= 0 ? H5Aget_space(attr) : H5I_INVALID_HID;
    int same = t >= 0 && sp >= 0 && H5Tget_size(t) == H5Tget_size(type) &&
               H5Tget_class(t) == H5Tget_class(type) &&
               H5Sget_simple_extent_npoints(sp) == H5Sget_simple_extent_npoints(space) &&
               H5Sget_simple_extent_type(sp) == H5Sget_simple_extent_type(space);
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (!same) {
      if (attr >= 0) H5Aclose(attr);
      attr = H5I_INVALID_HID;
      LS_H5_TRY(H5Adelete(obj, name), "attribute delete");
    }
  }
  if (attr < 0)
    LS_H5_TRY(attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT),
              "attribute create");
  LS_H5_TRY(H5Awrite(attr, type, buf), "attribute write");
  H5Aclose(attr);
  H5Oclose(obj);
  return LS_OK;
fail:
  if (attr >= 0) H5Aclose(attr);
  if (obj >= 0) H5Oclose(obj);
  return LS_ERR;
}

int ls_h5out_attr_str(ls_h5out_t *h, const char *obj_path, const char *name, const char *v) {
  return ls_h5out_attr_str_sized(h, obj_path, name, v, strlen(v) + 1);
}

int ls_h5out_attr_str_sized(ls_h5out_t *h, const char *obj_path, const char *name,
                            const char *v, size_t size) {
  char *buf = calloc(1, size > strlen(v) ? size : strlen(v) + 1);
  if (!buf) return LS_ERR;
  memcpy(buf, v, strlen(v));
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, size > strlen(v) ? size : strlen(v) + 1);
  H5Tset_strpad(type, H5T_STR_NULLTERM);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t space = H5Screate(H5S_SCALAR);
  int rc = write_attr(h, obj_path, name, type, space, buf);
  H5Sclose(space);
  H5Tclose(type);
  free(buf);
  return rc;
}

int ls_h5out_read_attr_str(ls_h5out_t *h, const char *obj_path, const char *name, char *out,
                           size_t cap) {
  out[0] = '\0';
  hid_t attr = H5Aopen_by_name(h->file, obj_path, name, H5P_DEFAULT, H5P_DEFAULT);
  if (attr < 0) return LS_ERR;
  hid_t t = H5Aget_type(attr);
  size_t n = H5Tget_size(t);
  char *buf = calloc(1, n + 1);
  int rc = buf && H5Tget_class(t) == H5T_STRING && H5Aread(attr, t, buf) >= 0 ? LS_OK : LS_ERR;
  if (rc == LS_OK) snprintf(out, cap, "%s", buf);
  free(buf);
  H5Tclose(t);
  H5Aclose(attr);
  return rc;
}

int ls_h5out_dataset_dims(ls_h5out_t *h, const char *name, hsize_t *dims, int cap) {
  if (H5Lexists(h->file, name, H5P_DEFAULT) <= 0) return -1;
  hid_t d = H5Dopen2(h->file, name, H5P_DEFAULT);
  if (d < 0) return -1;
  hid_t sp = H5Dget_space(d);
  int nd = H5Sget_simple_extent_ndims(sp);
  if (nd > cap) nd = -1;
  else H5Sget_simple_extent_dims(sp, dims, NULL);
  H5Sclose(sp);
  H5Dclose(d);
  return nd;
}

static int attr_array(ls_h5out_t *h, const char *obj_path, const char *name, hid_t type,
                      const void *v, int n) {
  hsize_t dims[1] = {(hsize_t)n};
  hid_t space = n > 0 ? H5Screate_simple(1, dims, NULL) : H5Screate(H5S_NULL);
  static const int64_t none = 0; /* H5Awrite wants a buffer even for an empty attribute */
  int rc = write_attr(h, obj_path, name, type, space, n > 0 ? v : (const void *)&none);
  H5Sclose(space);
  return rc;
}

int ls_h5out_attr_i64(ls_h5out_t *h, const char *obj_path, const char *name, const int64_t *v,
                      int n) {
  return attr_array(h, obj_path, name, H5T_NATIVE_INT64, v, n);
}

int ls_h5out_attr_f64(ls_h5out_t *h, const char *obj_path, const char *name, const double *v,
                      int n) {
  return attr_array(h, obj_path, name, H5T_NATIVE_DOUBLE, v, n);
}

/* ---- datasets ------------------------------------------------------------------------ */
int ls_h5out_create_dataset(ls_h5out_t *h, const char *name, hid_t type, int rank,
                            const hsize_t *dims) {
  return ls_h5out_create_dataset_chunked(h, name, type, rank, dims, NULL, 0);
}

int ls_h5out_create_dataset_chunked(ls_h5out_t *h, const char *name, hid_t type, int rank,
                                    const hsize_t *dims, const hsize_t *chunk, int level) {
  hid_t space = H5I_INVALID_HID, lcpl = H5I_INVALID_HID, dcpl = H5I_INVALID_HID,
        dset = H5I_INVALID_HID;
  LS_H5_TRY(space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, NULL),
            "dataspace create");
  lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
  if (chunk) {
    LS_H5_TRY(H5Pset_chunk(dcpl, rank, chunk), "chunk layout");
    if (level > 0) {
      LS_H5_TRY(H5Pset_shuffle(dcpl), "shuffle filter");
      LS_H5_TRY(H5Pset_deflate(dcpl, (unsigned)level), "deflate filter");
    }
  } else {
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER); /* (not allowed with filters) */
  }
  LS_H5_TRY(dset = H5Dcreate2(h->file, name, type, space, lcpl, dcpl, H5P_DEFAULT),
          "dataset create");
  H5Dclose(dset);
  H5Pclose(dcpl);
  H5Pclose(lcpl);
  H5Sclose(space);
  return LS_OK;
fail:
  if (dcpl >= 0) H5Pclose(dcpl);
  if (lcpl >= 0) H5Pclose(lcpl);
  if (space >= 0) H5Sclose(space);
  return LS_ERR;
}

int ls_h5out_dim_scale(ls_h5out_t *h, const char *scale, const char *dimname,
                       const char *const *dsets, const int *idx) {
  hid_t s = H5I_INVALID_HID, d = H5I_INVALID_HID;
  LS_H5_TRY(s = H5Dopen2(h->file, scale, H5P_DEFAULT), "dimension scale open");
  if (H5DSis_scale(s) <= 0) LS_H5_TRY(H5DSset_scale(s, dimname), "dimension scale");
  for (int i = 0; dsets[i]; i++) {
    LS_H5_TRY(d = H5Dopen2(h->file, dsets[i], H5P_DEFAULT), "dataset open");
    LS_H5_TRY(H5DSattach_scale(d, s, (unsigned)idx[i]), "dimension scale attach");
    H5Dclose(d);
    d = H5I_INVALID_HID;
  }
  H5Dclose(s);
  return LS_OK;
fail:
  if (d >= 0) H5Dclose(d);
  if (s >= 0) H5Dclose(s);
  return LS_ERR;
}

int ls_h5out_drop_datasets(ls_h5out_t *h, const char *scale, const char *const *dsets,
                           const int *idx) {
  hid_t s = H5I_INVALID_HID, d = H5I_INVALID_HID;
  LS_H5_TRY(s = H5Dopen2(h->file, scale, H5P_DEFAULT), "dimension scale open");
  for (int i = 0; dsets[i]; i++) {
    LS_H5_TRY(d = H5Dopen2(h->file, dsets[i], H5P_DEFAULT), "dataset open");
    if (H5DSis_attached(d, s, (unsigned)idx[i]) > 0)
      LS_H5_TRY(H5DSdetach_scale(d, s, (unsigned)idx[i]), "dimension scale detach");
    H5Dclose(d);
    d = H5I_INVALID_HID;
    LS_H5_TRY(H5Ldelete(h->file, dsets[i], H5P_DEFAULT), "dataset unlink");
  }
  H5Dclose(s);
  return LS_OK;
fail:
  if (d >= 0) H5Dclose(d);
  if (s >= 0) H5Dclose(s);
  return LS_ERR;
}

int ls_h5out_unlink(ls_h5out_t *h, const char *name) {
  LS_H5_TRY(H5Ldelete(h->file, name, H5P_DEFAULT), "dataset unlink");
  return LS_OK;
fail:
  return LS_ERR;
}

hid_t ls_h5out_float_type(ls_dtype_t dt) {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  if (dt == LS_DT_F32 || t < 0) return t;
  /* fields first (they must fit the size), then the size, then the bias */
  if (dt == LS_DT_F16) {
    H5Tset_fields(t, 15, 10, 5, 0, 10);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 15);
  } else {
    H5Tset_fields(t, 15, 7, 8, 0, 7);
    H5Tset_size(t, 2);
    H5Tset_ebias(t, 127);
  }
  return t;
}

int ls_h5out_raw_offset(ls_h5out_t *h, const char *name, uint64_t *offset) {
  hid_t d = H5Dopen2(h->file, name, H5P_DEFAULT);
  if (d < 0) return LS_ERR;
  hid_t dcpl = H5Dget_create_plist(d);
  const int contiguous = dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CONTIGUOUS;
  if (dcpl >= 0) H5Pclose(dcpl);
  haddr_t a = contiguous ? H5Dget_offset(d) : HADDR_UNDEF;
  H5Dclose(d);
  if (a == HADDR_UNDEF) return LS_ERR;
  *offset = (uint64_t)a;
  return LS_OK;
}

int ls_h5out_write(ls_h5out_t *h, const char *name, hid_t mem_type, int rank,
                   const hsize_t *start, const hsize_t *count, const void *buf) {
  hid_t dset = H5I_INVALID_HID, fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
  hsize_t n = rank == 0 ? count != NULL : 1;
  for (int i = 0; i < rank; i++) n *= count[i];
  LS_H5_TRY(dset = H5Dopen2(h->file, name, H5P_DEFAULT), "dataset open");
  LS_H5_TRY(fspace = H5Dget_space(dset), "get dataspace");
  if (rank == 0 && n) { /* a scalar */
    LS_H5_TRY(mspace = H5Screate(H5S_SCALAR), "memory dataspace");
  } else if (n == 0) {
    H5Sselect_none(fspace);
    mspace = H5Screate(H5S_NULL);
    H5Sselect_none(mspace);
  } else {
    LS_H5_TRY(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL), "hyperslab");
    LS_H5_TRY(mspace = H5Screate_simple(rank, count, NULL), "memory dataspace");
  }
  LS_H5_TRY(H5Dwrite(dset, mem_type, mspace, fspace, h->dxpl, buf), "write");
  H5Sclose(mspace);
  H5Sclose(fspace);
  H5Dclose(dset);
  return LS_OK;
fail:
  if (mspace >= 0) H5Sclose(mspace);
  if (fspace >= 0) H5Sclose(fspace);
  if (dset >= 0) H5Dclose(dset);
  return LS_ERR;
}
