/* ls_json.c: duplicate keys (see ls_json.h). */
#include "ls_json.h"

#include <string.h>

const char *ls_json_duplicate_key(const cJSON *item) {
  if (!item) return NULL;
  for (const cJSON *c = item->child; c; c = c->next) {
    if (cJSON_IsObject(item) && c->string)
      for (const cJSON *d = c->next; d; d = d->next)
        if (d->string && strcmp(c->string, d->string) == 0) return c->string;
    if (cJSON_IsObject(c) || cJSON_IsArray(c)) {
      const char *k = ls_json_duplicate_key(c);
      if (k) return k;
    }
  }
  return NULL;
}
