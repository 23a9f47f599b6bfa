/* h5out.h: the parallel HDF5 output file. Every call is collective over the
 * communicator the file was created with (all ranks call, with the same arguments
 * except the rows they write). The sequence is always: fapl_mpio + collective
 * metadata, create, per-rank hyperslab, collective dxpl, write, close every id. */
#ifndef LS_H5OUT_H
#define LS_H5OUT_H

#include <hdf5.h>
#include <mpi.h>
#include <stdint.h>

#include "dtype.h"

typedef struct {
  hid_t file;
  hid_t dxpl; /* collective transfer */
  char path[4096];
} ls_h5out_t;

/* Create the file (refuses an existing one unless force). */
int ls_h5out_create(ls_h5out_t *h, const char *path, MPI_Comm comm, int force);
/* Open an existing file read-write (for --resume). */
int ls_h5out_open(ls_h5out_t *h, const char *path, MPI_Comm comm);
int ls_h5out_close(ls_h5out_t *h);
int ls_h5out_flush(ls_h5out_t *h);

/* Attributes on the object at obj_path ("/" for the root); created or overwritten. */
int ls_h5out_attr_str(ls_h5out_t *h, const char *obj_path, const char *name, const char *v);
/* A string attribute of a fixed byte size (so later values up to size-1 bytes are
 * written in place). */
int ls_h5out_attr_str_sized(ls_h5out_t *h, const char *obj_path, const char *name,
                            const char *v, size_t size);
int ls_h5out_read_attr_str(ls_h5out_t *h, const char *obj_path, const char *name, char *out,
                           size_t cap);
/* Rank of dataset `name` with its dims, or -1 if absent. */
int ls_h5out_dataset_dims(ls_h5out_t *h, const char *name, hsize_t *dims, int cap);
int ls_h5out_attr_i64(ls_h5out_t *h, const char *obj_path, const char *name, const int64_t *v,
                      int n);
int ls_h5out_attr_f64(ls_h5out_t *h, const char *obj_path, const char *name, const double *v,
                      int n);

/* The file type of stored activations: IEEE float32, IEEE float16 (h5py reads numpy
 * float16), or bfloat16 as an HDF5 float of 1 sign, 8 exponent (bias 127) and 7 mantissa
 * bits (h5py and HDF5 read it back as float32, exactly). Close it with H5Tclose. */
hid_t ls_h5out_float_type(ls_dtype_t dt);
/* Create a dataset (intermediate groups created) of the given type and dims (rank 0: a
 * scalar). */
int ls_h5out_create_dataset(ls_h5out_t *h, const char *name, hid_t type, int rank,
                            const hsize_t *dims);
/* The file offset of a dataset's raw data (contiguous, allocated at creation, as
 * ls_h5out_create_dataset makes them), so that rows can be written to it without HDF5
 * (src/writer.c); LS_ERR (quietly) when HDF5 cannot say, e.g. a dataset of no bytes. */
int ls_h5out_raw_offset(ls_h5out_t *h, const char *name, uint64_t *offset);
/* The same, chunked (chunk dims, rank entries) and deflated at `level` (1-9) when level >
 * 0; parallel HDF5 then needs collective writes (every write here is). */
int ls_h5out_create_dataset_chunked(ls_h5out_t *h, const char *name, hid_t type, int rank,
                                    const hsize_t *dims, const hsize_t *chunk, int level);
/* Detach dimension scale `scale` from dimension idx of each dataset in `dsets` (NULL-ended),
 * then unlink those datasets (collective): a dataset is re-created with other dimensions
 * without leaving the scale a dangling reference. */
int ls_h5out_drop_datasets(ls_h5out_t *h, const char *scale, const char *const *dsets,
                           const int *idx);
/* Unlink dataset `name` (collective). */
int ls_h5out_unlink(ls_h5out_t *h, const char *name);
/* Make dataset `scale` a dimension scale named dimname unless it is one already (netCDF /
 * xarray read it as the dimension of that name), and attach it to dimension idx of each
 * dataset in `dsets` (NULL-ended). Collective. */
int ls_h5out_dim_scale(ls_h5out_t *h, const char *scale, const char *dimname,
                       const char *const *dsets, const int *idx);
/* Write a block of a dataset: start/count per dimension (count may be all zero on
 * ranks with nothing to write; they still take part). A scalar dataset (created with rank
 * 0): the ranks passing count non-NULL write it, the others pass NULL. */
int ls_h5out_write(ls_h5out_t *h, const char *name, hid_t mem_type, int rank,
                   const hsize_t *start, const hsize_t *count, const void *buf);

#endif
