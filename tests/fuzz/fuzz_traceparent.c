/*
 * tests/fuzz/fuzz_traceparent.c - libFuzzer target for fg_traceparent_parse
 * (`make fuzz`). Every input must be parsed or refused with FG_EPARSE
 * without reading past its length; an accepted value must format back to a
 * version-00 header that parses to the same ids and flags.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <floodgate.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fg_traceparent tp;
    int rc = fg_traceparent_parse((const char *)data, size, &tp);
    if (rc != 0 && rc != FG_EPARSE)
        abort();
    if (rc == 0) {
        char buf[FG_TRACEPARENT_LEN + 1];
        fg_traceparent again;
        if (fg_traceparent_format(&tp, buf, sizeof(buf)) != 0 ||
            fg_traceparent_parse(buf, FG_TRACEPARENT_LEN, &again) != 0 ||
            memcmp(again.trace_id, tp.trace_id, 16) != 0 ||
            memcmp(again.parent_id, tp.parent_id, 8) != 0 || again.flags != tp.flags)
            abort();
    }
    return 0;
}
