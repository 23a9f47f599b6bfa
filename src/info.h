/* info.h: `layersweep info` (src/info.c). */
#ifndef LS_INFO_H
#define LS_INFO_H

/* Print what the output file at path holds; with plot, also write the per-layer time
 * picture there (SVG; refused over an input or, without force, an existing file).
 * Returns 0 for a complete file, 1 for a partial one, 2 on error (one line printed). */
int ls_info_main(const char *path, const char *plot, int force);

#endif
