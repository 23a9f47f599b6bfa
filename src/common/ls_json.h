/* ls_json.h: JSON read as the Hugging Face stack reads it. Python's json module (and so
 * transformers) keeps the last value of a key given twice in one object; cJSON keeps the
 * first. Rather than run another model or dataset than transformers would, a duplicated
 * key is found and refused. */
#ifndef LS_JSON_H
#define LS_JSON_H

#include <cjson/cJSON.h>

/* The first key that appears twice in one object anywhere inside item (nested objects
 * and arrays included), NULL if none. */
const char *ls_json_duplicate_key(const cJSON *item);

#endif
