/*
 * examples/hello.c - the smallest complete floodgate program.
 *
 * One custom stage (it rejects requests without an x-api-key header) in a
 * chain around a handler; three requests go through it, synchronously.
 *
 * Build in the tree:  make examples   (or: make demo, which also runs it)
 * Build out of tree against an installed floodgate:
 *     cc hello.c $(pkg-config --cflags --libs floodgate)
 *     cc hello.c -static $(pkg-config --static --cflags --libs floodgate)
 */
#include <stdio.h>

#include <floodgate.h>

/* The stage: admit a request only if it carries an API key. */
static int require_key_enter(void *state, fg_ctx *ctx, uint64_t *slot) {
    (void)state;
    (void)slot;
    fg_str key;
    return fg_ctx_header(ctx, "x-api-key", &key) == 0 && key.len > 0 ? 0 : FG_EREJECTED;
}

static const fg_stage_ops require_key_ops = {"require-key", require_key_enter, NULL, NULL};

/* The handler: the service's real work. */
static int hello_handler(fg_ctx *ctx, void *arg) {
    (void)arg;
    printf("  handler: hello, %.*s\n", (int)ctx->path.len, ctx->path.ptr);
    return 0;
}

static void request(const fg_chain *chain, const char *path, const char *key) {
    fg_ctx ctx;
    fg_ctx_init(&ctx, "GET", path);
    if (key)
        fg_ctx_add_header(&ctx, "x-api-key", key);
    int rc = fg_chain_call(chain, &ctx, hello_handler, NULL);
    printf("GET %s -> %s (%s)%s%s\n", path, fg_err_name(rc), fg_strerror(rc),
           ctx.rejected_by ? ", rejected by " : "",
           ctx.rejected_by ? fg_stage_name(ctx.rejected_by) : "");
}

int main(void) {
    fg_chain_options opts = FG_CHAIN_OPTIONS_INIT;
    opts.name = "hello";
    fg_chain *chain;
    fg_stage *stage;
    if (fg_chain_new(&opts, &chain) != 0)
        return 1;
    if (fg_stage_new(&require_key_ops, NULL, "api-key", &stage) != 0 ||
        fg_chain_use(chain, stage) != 0) {
        fg_chain_free(chain);
        return 1;
    }
    printf("floodgate %s, chain \"%s\" with %zu stage\n", fg_version_string(),
           fg_chain_name(chain), fg_chain_length(chain));
    request(chain, "/world", "secret");
    request(chain, "/anonymous", NULL);
    request(chain, "/again", "secret");
    fg_chain_free(chain);
    return 0;
}
