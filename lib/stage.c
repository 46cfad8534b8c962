/*
 * lib/stage.c - the stage object: a kind's hooks plus one instance's state,
 * reference counted so one stage (say, a shared limiter) can sit in several
 * chains.
 */
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/stage.h"

#include "alloc.h"
#include "atomic.h"
#include "internal.h"

int fg_stage_new(const fg_stage_ops *ops, void *state, const char *name, fg_stage **out) {
    if (ops == NULL || ops->kind == NULL || name == NULL || out == NULL)
        return FG_EINVAL;
    size_t len = strnlen(name, FG_STAGE_NAME_MAX + 1);
    if (len > FG_STAGE_NAME_MAX)
        return FG_ETOOLONG;
    fg_stage *stage = fg__malloc(sizeof(*stage));
    if (stage == NULL)
        return FG_ENOMEM;
    stage->name = fg__strndup(name, len);
    if (stage->name == NULL) {
        fg__free(stage);
        return FG_ENOMEM;
    }
    stage->ops = ops;
    stage->state = state;
    stage->refs = 1;
    *out = stage;
    return 0;
}

fg_stage *fg_stage_ref(fg_stage *stage) {
    /* A reference can only be taken by someone already holding one, so the
     * count is >= 1 here and the increment needs no ordering of its own. */
    if (stage)
        fg__faa_u32(&stage->refs, 1);
    return stage;
}

void fg_stage_unref(fg_stage *stage) {
    if (stage == NULL)
        return;
    /* The decrement is a full barrier: every use of the stage by the thread
     * dropping a reference happens before the last holder frees it. */
    if (fg__faa_u32(&stage->refs, UINT32_MAX) != 1)
        return;
    fg__fence_acquire();
    if (stage->ops->destroy)
        stage->ops->destroy(stage->state);
    fg__free(stage->name);
    fg__free(stage);
}

const char *fg_stage_name(const fg_stage *stage) { return stage ? stage->name : ""; }

const char *fg_stage_kind(const fg_stage *stage) { return stage ? stage->ops->kind : ""; }

void *fg_stage_state(const fg_stage *stage) { return stage ? stage->state : NULL; }
