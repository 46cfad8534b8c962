/*
 * lib/expr.c - rule expressions: a macro-free subset of CEL, compiled once
 * into a flat array of typed nodes and evaluated without allocation.
 *
 * The compiler is a recursive-descent parser over a bounded source (length,
 * nesting depth and node count all capped), with the types checked as the
 * nodes are made, so evaluation cannot meet a type error: it meets only
 * absent values and strings that are not numbers, which make their
 * comparison false. Evaluation recurses over the node array, at most
 * FG_EXPR_MAX_DEPTH deep; the only buffers are on its stack (for baggage
 * values, which must be percent-decoded).
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "floodgate/error.h"
#include "floodgate/router.h"
#include "floodgate/trace.h"

#include "alloc.h"
#include "internal.h"
#include "router_internal.h"

/* ---- nodes ------------------------------------------------------------------------ */

enum fg_node_kind {
    FG_N_BOOL, /* literal: b */
    FG_N_NUM,  /* literal: num */
    FG_N_STR,  /* literal: str */
    FG_N_PATH, /* the path (up to '?') */
    FG_N_METHOD,
    FG_N_GET,  /* map a[str]: source in op */
    FG_N_HAS,  /* has(child a), a FG_N_GET */
    FG_N_NOT,  /* !a */
    FG_N_AND,  /* a && b */
    FG_N_OR,   /* a || b */
    FG_N_CMP,  /* a op b */
    FG_N_IN,   /* a in list b */
    FG_N_LIST, /* elements: a = first, each element's `next` */
    FG_N_CALL, /* a.method(b): op = method */
};

/* Static types. VAL is a request value: a string that may be absent. */
enum fg_type { FG_T_BOOL, FG_T_NUM, FG_T_STR, FG_T_VAL, FG_T_LIST };

/* Shapes evaluated without the general leaf: meta.x == "lit" (or !=),
 * and meta.x <op> number. */
enum { FG_FAST_NONE = 0, FG_FAST_META_STR = 1, FG_FAST_META_NUM = 2 };

enum fg_cmp { FG_CMP_EQ, FG_CMP_NE, FG_CMP_LT, FG_CMP_LE, FG_CMP_GT, FG_CMP_GE };
enum fg_call { FG_CALL_STARTS, FG_CALL_ENDS, FG_CALL_CONTAINS };

/* A number: exact for integers, a double otherwise. */
typedef struct fg_num {
    int is_int;
    int64_t i;
    double d;
} fg_num;

typedef struct fg_node {
    uint8_t kind;
    uint8_t type;
    uint8_t op;   /* comparison, method, or map source */
    uint8_t big;  /* a leaf that reads baggage (needs decode buffers) */
    uint8_t fast; /* FG_FAST_*: a meta entry compared with a literal */
    int16_t a, b; /* children (node indices), -1 when none */
    int16_t next; /* the next element of a list */
    int b_val;    /* FG_N_BOOL */
    fg_num num;   /* FG_N_NUM */
    fg_str str;   /* FG_N_STR and FG_N_GET's key: into the expression's text */
} fg_node;

struct fg_expr {
    int root;
    int nnodes;
    fg_node nodes[FG_EXPR_MAX_NODES];
    char *text; /* decoded string literals, owned */
};

/* ---- numbers ---------------------------------------------------------------------- */

/* Parse a whole decimal number: [+-]digits[.digits]. The same routine reads
 * literals and request values, so "25" in a header equals 25 in a rule.
 * Locale-independent (no strtod). Returns 0 or -1. */
static int fg_parse_num(const char *s, size_t n, fg_num *out) {
    size_t i = 0;
    int neg = 0;
    if (i < n && (s[i] == '+' || s[i] == '-'))
        neg = s[i++] == '-';
    size_t int_start = i;
    uint64_t iv = 0;
    int overflow = 0;
    double dv = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        unsigned d = (unsigned)(s[i] - '0');
        if (iv > (UINT64_MAX - d) / 10)
            overflow = 1;
        else
            iv = iv * 10 + d;
        dv = dv * 10 + d;
        i++;
    }
    if (i == int_start)
        return -1;
    int is_int = 1;
    if (i < n && s[i] == '.') {
        i++;
        size_t frac_start = i;
        double scale = 0.1;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            dv += (s[i] - '0') * scale;
            scale /= 10;
            i++;
        }
        if (i == frac_start)
            return -1;
        is_int = 0;
    }
    if (i != n)
        return -1;
    if (is_int && !overflow && iv <= (uint64_t)INT64_MAX + (uint64_t)neg) {
        out->is_int = 1;
        out->i = neg ? (int64_t)(0 - iv) : (int64_t)iv;
        out->d = (double)out->i;
    } else {
        out->is_int = 0;
        out->d = neg ? -dv : dv;
    }
    return 0;
}

int fg__parse_double(const char *s, size_t n, double *out) {
    fg_num v;
    if (fg_parse_num(s, n, &v) != 0)
        return -1;
    *out = v.d;
    return 0;
}

/* -1, 0, 1 */
static int fg_num_cmp(const fg_num *x, const fg_num *y) {
    if (x->is_int && y->is_int)
        return (x->i > y->i) - (x->i < y->i);
    return (x->d > y->d) - (x->d < y->d);
}

/* ---- the compiler ------------------------------------------------------------------ */

enum fg_tok {
    FG_TK_END,
    FG_TK_IDENT,
    FG_TK_STR,
    FG_TK_NUM,
    FG_TK_LPAREN,
    FG_TK_RPAREN,
    FG_TK_LBRACK,
    FG_TK_RBRACK,
    FG_TK_COMMA,
    FG_TK_DOT,
    FG_TK_NOT,
    FG_TK_AND,
    FG_TK_OR,
    FG_TK_CMP, /* op in tok_op */
    FG_TK_MINUS,
    FG_TK_BAD,
};

struct fg_parser {
    const char *src;
    size_t len;
    size_t pos; /* next byte */
    /* the current token */
    enum fg_tok tok;
    size_t tok_start, tok_len;
    int tok_op;
    fg_str tok_str; /* decoded string literal, in out->text */
    fg_num tok_num;
    int depth;
    fg_expr *out;
    size_t text_used;
    fg_parse_error *err;
    int failed;
};

static void fg_fail(struct fg_parser *p, int code, size_t at, const char *fmt,
                    const char *arg) {
    if (p->failed)
        return;
    p->failed = code;
    if (p->err != NULL) {
        p->err->code = code;
        p->err->column = at + 1;
        (void)snprintf(p->err->message, sizeof(p->err->message), fmt, arg ? arg : "");
    }
}

static int fg_ident_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int fg_ident_char(char c) { return fg_ident_start(c) || (c >= '0' && c <= '9'); }

/* Decode a string literal starting at the quote at p->pos. */
static void fg_lex_string(struct fg_parser *p) {
    char quote = p->src[p->pos++];
    char *dst = p->out->text + p->text_used;
    size_t n = 0;
    for (;;) {
        if (p->pos >= p->len) {
            fg_fail(p, FG_EPARSE, p->tok_start, "unterminated string%s", NULL);
            p->tok = FG_TK_BAD;
            return;
        }
        char c = p->src[p->pos++];
        if (c == quote)
            break;
        if (c == '\\') {
            if (p->pos >= p->len)
                continue; /* reported as unterminated above */
            char e = p->src[p->pos++];
            switch (e) {
            case '\\':
            case '"':
            case '\'':
                c = e;
                break;
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            default:
                fg_fail(p, FG_EPARSE, p->pos - 2, "unknown escape in string%s", NULL);
                p->tok = FG_TK_BAD;
                return;
            }
        }
        dst[n++] = c; /* the text buffer is as long as the source: it fits */
    }
    p->tok = FG_TK_STR;
    p->tok_str = (fg_str){dst, n};
    p->text_used += n;
}

static void fg_next(struct fg_parser *p) {
    while (p->pos < p->len && (p->src[p->pos] == ' ' || p->src[p->pos] == '\t' ||
                               p->src[p->pos] == '\n' || p->src[p->pos] == '\r'))
        p->pos++;
    p->tok_start = p->pos;
    if (p->pos >= p->len) {
        p->tok = FG_TK_END;
        p->tok_len = 0;
        return;
    }
    const char *s = p->src + p->pos;
    size_t left = p->len - p->pos;
    char c = s[0];
    p->tok_len = 1;
    if (fg_ident_start(c)) {
        size_t n = 1;
        while (n < left && fg_ident_char(s[n]))
            n++;
        p->tok = FG_TK_IDENT;
        p->tok_len = n;
        p->pos += n;
        return;
    }
    if (c >= '0' && c <= '9') {
        size_t n = 1;
        while (n < left && ((s[n] >= '0' && s[n] <= '9') || s[n] == '.'))
            n++;
        p->tok_len = n;
        p->pos += n;
        if (n < left && fg_ident_char(s[n])) {
            fg_fail(p, FG_EPARSE, p->tok_start, "malformed number%s", NULL);
            p->tok = FG_TK_BAD;
            return;
        }
        if (fg_parse_num(s, n, &p->tok_num) != 0 || !p->tok_num.is_int) {
            /* decimals are fine; only a malformed one is not */
            if (fg_parse_num(s, n, &p->tok_num) != 0) {
                fg_fail(p, FG_EPARSE, p->tok_start, "malformed number%s", NULL);
                p->tok = FG_TK_BAD;
                return;
            }
        }
        p->tok = FG_TK_NUM;
        return;
    }
    if (c == '"' || c == '\'') {
        fg_lex_string(p);
        p->tok_len = p->pos - p->tok_start;
        return;
    }
    char d = '\0';
    if (left > 1)
        d = s[1];
    p->pos++;
    switch (c) {
    case '(':
        p->tok = FG_TK_LPAREN;
        return;
    case ')':
        p->tok = FG_TK_RPAREN;
        return;
    case '[':
        p->tok = FG_TK_LBRACK;
        return;
    case ']':
        p->tok = FG_TK_RBRACK;
        return;
    case ',':
        p->tok = FG_TK_COMMA;
        return;
    case '.':
        p->tok = FG_TK_DOT;
        return;
    case '-':
        p->tok = FG_TK_MINUS;
        return;
    case '!':
        if (d == '=') {
            p->pos++;
            p->tok_len = 2;
            p->tok = FG_TK_CMP;
            p->tok_op = FG_CMP_NE;
        } else {
            p->tok = FG_TK_NOT;
        }
        return;
    case '=':
        if (d == '=') {
            p->pos++;
            p->tok_len = 2;
            p->tok = FG_TK_CMP;
            p->tok_op = FG_CMP_EQ;
            return;
        }
        fg_fail(p, FG_EPARSE, p->tok_start, "'=' is not an operator: use '=='%s", NULL);
        p->tok = FG_TK_BAD;
        return;
    case '<':
    case '>':
        p->tok = FG_TK_CMP;
        if (d == '=') {
            p->pos++;
            p->tok_len = 2;
            p->tok_op = c == '<' ? FG_CMP_LE : FG_CMP_GE;
        } else {
            p->tok_op = c == '<' ? FG_CMP_LT : FG_CMP_GT;
        }
        return;
    case '&':
    case '|':
        if (d == c) {
            p->pos++;
            p->tok_len = 2;
            p->tok = c == '&' ? FG_TK_AND : FG_TK_OR;
            return;
        }
        fg_fail(p, FG_EPARSE, p->tok_start, c == '&' ? "expected '&&'%s" : "expected '||'%s",
                NULL);
        p->tok = FG_TK_BAD;
        return;
    default: {
        char what[8];
        if ((unsigned char)c >= 0x20 && (unsigned char)c < 0x7f)
            (void)snprintf(what, sizeof(what), "'%c'", c);
        else
            (void)snprintf(what, sizeof(what), "0x%02x", (unsigned)(unsigned char)c);
        fg_fail(p, FG_EPARSE, p->tok_start, "unexpected character %s", what);
        p->tok = FG_TK_BAD;
        return;
    }
    }
}

static int fg_tok_is(const struct fg_parser *p, const char *word) {
    size_t n = strlen(word);
    return p->tok == FG_TK_IDENT && p->tok_len == n &&
           memcmp(p->src + p->tok_start, word, n) == 0;
}

static int fg_new_node(struct fg_parser *p, enum fg_node_kind kind, enum fg_type type) {
    if (p->failed)
        return -1;
    if (p->out->nnodes >= FG_EXPR_MAX_NODES) {
        fg_fail(p, FG_ETOOMANY, p->tok_start, "expression has too many terms%s", NULL);
        return -1;
    }
    int i = p->out->nnodes++;
    fg_node *n = &p->out->nodes[i];
    memset(n, 0, sizeof(*n));
    n->kind = (uint8_t)kind;
    n->type = (uint8_t)type;
    n->a = n->b = n->next = -1;
    return i;
}

static const char *fg_type_name(int t) {
    switch (t) {
    case FG_T_BOOL:
        return "a bool";
    case FG_T_NUM:
        return "a number";
    case FG_T_LIST:
        return "a list";
    default:
        return "a string";
    }
}

static int fg_is_stringy(int t) { return t == FG_T_STR || t == FG_T_VAL; }

static int fg_parse_or(struct fg_parser *p);

static int fg_expect(struct fg_parser *p, enum fg_tok tok, const char *what) {
    if (p->failed)
        return -1;
    if (p->tok != tok) {
        fg_fail(p, FG_EPARSE, p->tok_start, "expected %s", what);
        return -1;
    }
    fg_next(p);
    return 0;
}

/* A map name: header, meta, query, baggage. */
static int fg_map_source(const struct fg_parser *p) {
    if (fg_tok_is(p, "header"))
        return FG_SOURCE_HEADER;
    if (fg_tok_is(p, "meta"))
        return FG_SOURCE_META;
    if (fg_tok_is(p, "query"))
        return FG_SOURCE_QUERY;
    if (fg_tok_is(p, "baggage"))
        return FG_SOURCE_BAGGAGE;
    return -1;
}

/* map "[" string "]" or map "." ident, the map name being the current token. */
static int fg_parse_get(struct fg_parser *p, int source) {
    size_t at = p->tok_start;
    fg_next(p);
    int n = fg_new_node(p, FG_N_GET, FG_T_VAL);
    if (n < 0)
        return -1;
    p->out->nodes[n].op = (uint8_t)source;
    if (p->tok == FG_TK_LBRACK) {
        fg_next(p);
        if (p->tok != FG_TK_STR) {
            fg_fail(p, FG_EPARSE, p->tok_start, "expected a string key%s", NULL);
            return -1;
        }
        p->out->nodes[n].str = p->tok_str;
        fg_next(p);
        if (fg_expect(p, FG_TK_RBRACK, "']'") != 0)
            return -1;
    } else if (p->tok == FG_TK_DOT) {
        fg_next(p);
        if (p->tok != FG_TK_IDENT) {
            fg_fail(p, FG_EPARSE, p->tok_start, "expected a key name%s", NULL);
            return -1;
        }
        p->out->nodes[n].str = (fg_str){p->src + p->tok_start, p->tok_len};
        size_t key_end = p->tok_start + p->tok_len;
        fg_next(p);
        if (p->tok == FG_TK_MINUS && p->tok_start == key_end) {
            fg_fail(p, FG_EPARSE, p->tok_start,
                    "a key that is not an identifier must be indexed: map[\"x-env\"]%s", NULL);
            return -1;
        }
    } else {
        fg_fail(p, FG_EPARSE, at, "a map must be indexed: map[\"key\"] or map.key%s", NULL);
        return -1;
    }
    return n;
}

static int fg_parse_literal_list(struct fg_parser *p) {
    int list = fg_new_node(p, FG_N_LIST, FG_T_LIST);
    fg_next(p); /* '[' */
    int last = -1;
    while (!p->failed && p->tok != FG_TK_RBRACK) {
        int neg = 0;
        if (p->tok == FG_TK_MINUS) {
            neg = 1;
            fg_next(p);
        }
        int e;
        if (p->tok == FG_TK_STR && !neg) {
            e = fg_new_node(p, FG_N_STR, FG_T_STR);
            if (e >= 0)
                p->out->nodes[e].str = p->tok_str;
        } else if (p->tok == FG_TK_NUM) {
            e = fg_new_node(p, FG_N_NUM, FG_T_NUM);
            if (e >= 0) {
                fg_num v = p->tok_num;
                if (neg) {
                    v.i = -v.i;
                    v.d = -v.d;
                }
                p->out->nodes[e].num = v;
            }
        } else {
            fg_fail(p, FG_EPARSE, p->tok_start, "a list holds string or number literals%s",
                    NULL);
            return -1;
        }
        if (e < 0)
            return -1;
        if (last < 0)
            p->out->nodes[list].a = (int16_t)e;
        else
            p->out->nodes[last].next = (int16_t)e;
        last = e;
        fg_next(p);
        if (p->tok == FG_TK_COMMA)
            fg_next(p);
        else if (p->tok != FG_TK_RBRACK)
            fg_fail(p, FG_EPARSE, p->tok_start, "expected ',' or ']'%s", NULL);
    }
    if (fg_expect(p, FG_TK_RBRACK, "']'") != 0)
        return -1;
    return list;
}

/* primary: literal, attribute, map access, has(...), ( expr ), list; then
 * any .method("x") calls. */
static int fg_parse_primary(struct fg_parser *p) {
    if (p->failed)
        return -1;
    int n = -1;
    size_t at = p->tok_start;
    int source;
    if (p->tok == FG_TK_LPAREN) {
        fg_next(p);
        n = fg_parse_or(p);
        if (fg_expect(p, FG_TK_RPAREN, "')'") != 0)
            return -1;
    } else if (p->tok == FG_TK_STR) {
        n = fg_new_node(p, FG_N_STR, FG_T_STR);
        if (n >= 0)
            p->out->nodes[n].str = p->tok_str;
        fg_next(p);
    } else if (p->tok == FG_TK_NUM || p->tok == FG_TK_MINUS) {
        int neg = p->tok == FG_TK_MINUS;
        if (neg) {
            fg_next(p);
            if (p->tok != FG_TK_NUM) {
                fg_fail(p, FG_EPARSE, p->tok_start, "expected a number after '-'%s", NULL);
                return -1;
            }
        }
        n = fg_new_node(p, FG_N_NUM, FG_T_NUM);
        if (n >= 0) {
            fg_num v = p->tok_num;
            if (neg) {
                v.i = -v.i;
                v.d = -v.d;
            }
            p->out->nodes[n].num = v;
        }
        fg_next(p);
    } else if (p->tok == FG_TK_LBRACK) {
        n = fg_parse_literal_list(p);
    } else if (fg_tok_is(p, "true") || fg_tok_is(p, "false")) {
        n = fg_new_node(p, FG_N_BOOL, FG_T_BOOL);
        if (n >= 0)
            p->out->nodes[n].b_val = fg_tok_is(p, "true");
        fg_next(p);
    } else if (fg_tok_is(p, "path") || fg_tok_is(p, "method")) {
        n = fg_new_node(p, fg_tok_is(p, "path") ? FG_N_PATH : FG_N_METHOD, FG_T_STR);
        fg_next(p);
    } else if ((source = fg_map_source(p)) >= 0) {
        n = fg_parse_get(p, source);
    } else if (fg_tok_is(p, "has")) {
        fg_next(p);
        if (fg_expect(p, FG_TK_LPAREN, "'(' after has") != 0)
            return -1;
        size_t arg_at = p->tok_start;
        if ((source = fg_map_source(p)) < 0) {
            fg_fail(p, FG_EPARSE, arg_at, "has() takes a map entry, e.g. has(header.x)%s",
                    NULL);
            return -1;
        }
        int get = fg_parse_get(p, source);
        if (fg_expect(p, FG_TK_RPAREN, "')'") != 0)
            return -1;
        n = fg_new_node(p, FG_N_HAS, FG_T_BOOL);
        if (n >= 0)
            p->out->nodes[n].a = (int16_t)get;
    } else if (p->tok == FG_TK_IDENT) {
        char name[64];
        size_t len = p->tok_len < sizeof(name) - 1 ? p->tok_len : sizeof(name) - 1;
        memcpy(name, p->src + p->tok_start, len);
        name[len] = '\0';
        fg_fail(p, FG_EPARSE, at, "unknown name '%s'", name);
        return -1;
    } else if (p->tok == FG_TK_END) {
        fg_fail(p, FG_EPARSE, at, "unexpected end of expression%s", NULL);
        return -1;
    } else {
        fg_fail(p, FG_EPARSE, at, "expected a value%s", NULL);
        return -1;
    }
    /* Method calls on a string. */
    while (!p->failed && p->tok == FG_TK_DOT) {
        size_t dot_at = p->tok_start;
        fg_next(p);
        int method = fg_tok_is(p, "startsWith") ? FG_CALL_STARTS
                     : fg_tok_is(p, "endsWith") ? FG_CALL_ENDS
                     : fg_tok_is(p, "contains") ? FG_CALL_CONTAINS
                                                : -1;
        if (method < 0) {
            fg_fail(p, FG_EPARSE, p->tok_start,
                    "unknown method: use startsWith, endsWith or contains%s", NULL);
            return -1;
        }
        if (!fg_is_stringy(p->out->nodes[n].type)) {
            fg_fail(p, FG_EPARSE, dot_at, "method called on %s, not a string",
                    fg_type_name(p->out->nodes[n].type));
            return -1;
        }
        fg_next(p);
        if (fg_expect(p, FG_TK_LPAREN, "'('") != 0)
            return -1;
        size_t arg_at = p->tok_start;
        int arg = fg_parse_or(p);
        if (p->failed)
            return -1;
        if (!fg_is_stringy(p->out->nodes[arg].type)) {
            fg_fail(p, FG_EPARSE, arg_at, "the argument must be a string, not %s",
                    fg_type_name(p->out->nodes[arg].type));
            return -1;
        }
        if (fg_expect(p, FG_TK_RPAREN, "')'") != 0)
            return -1;
        int call = fg_new_node(p, FG_N_CALL, FG_T_BOOL);
        if (call < 0)
            return -1;
        p->out->nodes[call].op = (uint8_t)method;
        p->out->nodes[call].a = (int16_t)n;
        p->out->nodes[call].b = (int16_t)arg;
        n = call;
    }
    return p->failed ? -1 : n;
}

static int fg_parse_unary(struct fg_parser *p) {
    if (p->failed)
        return -1;
    int n;
    if (p->tok == FG_TK_NOT) {
        size_t at = p->tok_start;
        /* Each '!' nests, as each '(' does: both recurse. */
        if (++p->depth > FG_EXPR_MAX_DEPTH) {
            fg_fail(p, FG_ERANGE, p->tok_start, "expression nested too deeply%s", NULL);
            return -1;
        }
        fg_next(p);
        int a = fg_parse_unary(p);
        p->depth--;
        if (p->failed)
            return -1;
        if (p->out->nodes[a].type != FG_T_BOOL) {
            fg_fail(p, FG_EPARSE, at, "'!' needs a bool, not %s",
                    fg_type_name(p->out->nodes[a].type));
            return -1;
        }
        n = fg_new_node(p, FG_N_NOT, FG_T_BOOL);
        if (n >= 0)
            p->out->nodes[n].a = (int16_t)a;
    } else {
        n = fg_parse_primary(p);
    }
    return p->failed ? -1 : n;
}

/* Whether a op b type-checks; the message when not. */
static const char *fg_cmp_check(int op, int ta, int tb) {
    if (ta == FG_T_LIST || tb == FG_T_LIST)
        return "a list can only follow 'in'";
    if (ta == FG_T_BOOL || tb == FG_T_BOOL) {
        if (ta != tb)
            return "cannot compare a bool with something else";
        if (op != FG_CMP_EQ && op != FG_CMP_NE)
            return "bools compare only with == and !=";
        return NULL;
    }
    if (ta == FG_T_NUM || tb == FG_T_NUM)
        return NULL; /* numeric: strings are read as numbers */
    return NULL;     /* two strings */
}

static int fg_parse_rel(struct fg_parser *p) {
    int a = fg_parse_unary(p);
    if (p->failed)
        return -1;
    size_t at = p->tok_start;
    if (p->tok == FG_TK_CMP) {
        int op = p->tok_op;
        fg_next(p);
        int b = fg_parse_unary(p);
        if (p->failed)
            return -1;
        const char *why = fg_cmp_check(op, p->out->nodes[a].type, p->out->nodes[b].type);
        if (why != NULL) {
            fg_fail(p, FG_EPARSE, at, "%s", why);
            return -1;
        }
        int n = fg_new_node(p, FG_N_CMP, FG_T_BOOL);
        if (n < 0)
            return -1;
        p->out->nodes[n].op = (uint8_t)op;
        p->out->nodes[n].a = (int16_t)a;
        p->out->nodes[n].b = (int16_t)b;
        a = n;
    } else if (fg_tok_is(p, "in")) {
        fg_next(p);
        if (p->tok != FG_TK_LBRACK) {
            fg_fail(p, FG_EPARSE, p->tok_start, "'in' needs a list: x in [\"a\", \"b\"]%s",
                    NULL);
            return -1;
        }
        if (p->out->nodes[a].type == FG_T_BOOL || p->out->nodes[a].type == FG_T_LIST) {
            fg_fail(p, FG_EPARSE, at, "'in' needs a string or a number on its left%s", NULL);
            return -1;
        }
        int list = fg_parse_literal_list(p);
        int n = fg_new_node(p, FG_N_IN, FG_T_BOOL);
        if (n < 0)
            return -1;
        p->out->nodes[n].a = (int16_t)a;
        p->out->nodes[n].b = (int16_t)list;
        a = n;
    }
    if (!p->failed && (p->tok == FG_TK_CMP || fg_tok_is(p, "in"))) {
        fg_fail(p, FG_EPARSE, p->tok_start,
                "comparisons do not chain: use && (a < b && b < c)%s", NULL);
        return -1;
    }
    return p->failed ? -1 : a;
}

static int fg_parse_logic(struct fg_parser *p, int level) {
    int a = level == 0 ? fg_parse_logic(p, 1) : fg_parse_rel(p);
    enum fg_tok tok = level == 0 ? FG_TK_OR : FG_TK_AND;
    while (!p->failed && p->tok == tok) {
        size_t at = p->tok_start;
        fg_next(p);
        int b = level == 0 ? fg_parse_logic(p, 1) : fg_parse_rel(p);
        if (p->failed)
            return -1;
        if (p->out->nodes[a].type != FG_T_BOOL || p->out->nodes[b].type != FG_T_BOOL) {
            fg_fail(p, FG_EPARSE, at, "'%s' needs bools on both sides",
                    level == 0 ? "||" : "&&");
            return -1;
        }
        int n = fg_new_node(p, level == 0 ? FG_N_OR : FG_N_AND, FG_T_BOOL);
        if (n < 0)
            return -1;
        p->out->nodes[n].a = (int16_t)a;
        p->out->nodes[n].b = (int16_t)b;
        a = n;
    }
    return p->failed ? -1 : a;
}

/* An expression: the whole rule, a parenthesised one, or a method's
 * argument. Nesting counts every level below the whole rule. */
static int fg_parse_or(struct fg_parser *p) {
    if (++p->depth > FG_EXPR_MAX_DEPTH) {
        fg_fail(p, FG_ERANGE, p->tok_start, "expression nested too deeply%s", NULL);
        return -1;
    }
    int n = fg_parse_logic(p, 0);
    p->depth--;
    return n;
}

int fg_expr_compile(const char *src, size_t len, fg_expr **out, fg_parse_error *err) {
    if (err != NULL)
        memset(err, 0, sizeof(*err)), err->route = -1;
    if (out != NULL)
        *out = NULL;
    if (src == NULL || out == NULL)
        return FG_EINVAL;
    if (len > FG_EXPR_MAX_LEN) {
        if (err != NULL) {
            err->code = FG_ETOOLONG;
            err->column = FG_EXPR_MAX_LEN + 1;
            (void)snprintf(err->message, sizeof(err->message),
                           "expression longer than %d bytes", FG_EXPR_MAX_LEN);
        }
        return FG_ETOOLONG;
    }
    fg_expr *e = fg__calloc(1, sizeof(*e));
    if (e == NULL)
        return FG_ENOMEM;
    /* The source is copied first (key names like meta.uid point into it),
     * then decoded string literals follow it: never longer than the source. */
    e->text = fg__malloc(2 * len + 1);
    if (e->text == NULL) {
        fg__free(e);
        return FG_ENOMEM;
    }
    if (len)
        memcpy(e->text, src, len);
    struct fg_parser p = {
        .src = e->text, .len = len, .out = e, .text_used = len, .err = err, .depth = -1};
    fg_next(&p);
    int root = fg_parse_or(&p);
    if (!p.failed && p.tok != FG_TK_END)
        fg_fail(&p, FG_EPARSE, p.tok_start, "unexpected text after the expression%s", NULL);
    if (!p.failed && e->nodes[root].type != FG_T_BOOL)
        fg_fail(&p, FG_EPARSE, 0, "a rule must be true or false, not %s",
                fg_type_name(e->nodes[root].type));
    if (p.failed) {
        fg_expr_free(e);
        return p.failed;
    }
    /* Mark the leaves that read baggage: only they need decode buffers. */
    for (int i = 0; i < e->nnodes; i++) {
        fg_node *n = &e->nodes[i];
        if (n->kind != FG_N_CMP && n->kind != FG_N_IN && n->kind != FG_N_CALL &&
            n->kind != FG_N_HAS)
            continue;
        for (int c = 0; c < 2; c++) {
            int k = c ? n->b : n->a;
            if (k >= 0 && e->nodes[k].kind == FG_N_GET && e->nodes[k].op == FG_SOURCE_BAGGAGE)
                n->big = 1;
        }
    }
    for (int i = 0; i < e->nnodes; i++) {
        fg_node *n = &e->nodes[i];
        if (n->kind != FG_N_CMP || e->nodes[n->a].kind != FG_N_GET ||
            e->nodes[n->a].op != FG_SOURCE_META)
            continue;
        if (e->nodes[n->b].kind == FG_N_STR && (n->op == FG_CMP_EQ || n->op == FG_CMP_NE))
            n->fast = FG_FAST_META_STR;
        else if (e->nodes[n->b].kind == FG_N_NUM)
            n->fast = FG_FAST_META_NUM;
    }
    e->root = root;
    *out = e;
    return 0;
}

void fg_expr_free(fg_expr *expr) {
    if (expr == NULL)
        return;
    fg__free(expr->text);
    fg__free(expr);
}

/* ---- evaluation ------------------------------------------------------------------ */

/* A value met while evaluating: a number, or a string (possibly absent). */
typedef struct fg_val {
    int present;
    int is_num;
    fg_num num;
    fg_str str;
} fg_val;

/* A decoded baggage value: as long as a baggage header can be. Only the
 * leaf evaluators (comparisons, in, calls, has) hold such buffers, and
 * they never recurse, so at most one leaf frame is live at a time. */
#define FG_EXPR_VALUE_BUF (FG_BAGGAGE_MAX_BYTES + 1)
#define FG_LEAF           __attribute__((noinline))

/* Read the value of a FG_N_GET, FG_N_PATH, FG_N_METHOD, FG_N_STR or
 * FG_N_NUM node. buf holds a decoded baggage value. */
static void fg_eval_value(const fg_expr *e, int n, const fg_ctx *ctx, fg_val *v, char *buf) {
    v->str = (fg_str){NULL, 0};
    const fg_node *node = &e->nodes[n];
    v->present = 1;
    v->is_num = 0;
    switch (node->kind) {
    case FG_N_NUM:
        v->is_num = 1;
        v->num = node->num;
        return;
    case FG_N_STR:
        v->str = node->str;
        return;
    case FG_N_PATH:
        v->str = fg__route_path(ctx);
        return;
    case FG_N_METHOD:
        v->str = ctx->method;
        return;
    case FG_N_GET:
        if (node->op == FG_SOURCE_META) {
            v->present = fg__meta(ctx, &node->str, &v->str);
            return;
        }
        v->present = fg__request_value(ctx, node->op, node->str.ptr, node->str.len, &v->str,
                                       buf, buf ? FG_EXPR_VALUE_BUF : 0) == 0;
        return;
    default:
        v->present = 0;
        return;
    }
}

/* Read a string as a number for a numeric comparison. */
static int fg_val_num(const fg_val *v, fg_num *out) {
    if (v->is_num) {
        *out = v->num;
        return 0;
    }
    return fg_parse_num(v->str.ptr, v->str.len, out);
}

static int fg_cmp_result(int op, int c) {
    switch (op) {
    case FG_CMP_EQ:
        return c == 0;
    case FG_CMP_NE:
        return c != 0;
    case FG_CMP_LT:
        return c < 0;
    case FG_CMP_LE:
        return c <= 0;
    case FG_CMP_GT:
        return c > 0;
    default:
        return c >= 0;
    }
}

/* Compare two values; absent or not-a-number (in a numeric comparison)
 * makes it false, whatever the operator. */
static int fg_compare(int op, const fg_val *a, const fg_val *b) {
    if (!a->present || !b->present)
        return 0;
    if ((op == FG_CMP_EQ || op == FG_CMP_NE) && !a->is_num && !b->is_num) {
        int eq = a->str.len == b->str.len && fg__memeq(a->str.ptr, b->str.ptr, a->str.len);
        return op == FG_CMP_EQ ? eq : !eq;
    }
    if (a->is_num || b->is_num) {
        fg_num x, y;
        if (fg_val_num(a, &x) != 0 || fg_val_num(b, &y) != 0)
            return 0;
        return fg_cmp_result(op, fg_num_cmp(&x, &y));
    }
    size_t n = a->str.len < b->str.len ? a->str.len : b->str.len;
    int c = n ? memcmp(a->str.ptr, b->str.ptr, n) : 0;
    if (c == 0)
        c = (a->str.len > b->str.len) - (a->str.len < b->str.len);
    else
        c = c > 0 ? 1 : -1;
    return fg_cmp_result(op, c);
}

static int fg_eval(const fg_expr *e, int n, const fg_ctx *ctx);

/*
 * The leaves: comparisons of values, `in`, method calls and has(). abuf
 * and bbuf hold decoded baggage values; they are NULL unless the leaf reads
 * baggage (node->big), so the common leaf needs no large stack frame (a
 * frame over a page costs a stack probe per page on every call).
 */
static int fg_eval_leaf(const fg_expr *e, const fg_node *node, const fg_ctx *ctx, char *abuf,
                        char *bbuf) {
    fg_val a, b;
    switch (node->kind) {
    case FG_N_HAS: {
        const fg_node *get = &e->nodes[node->a];
        fg_str v;
        int rc = fg__request_value(ctx, get->op, get->str.ptr, get->str.len, &v, abuf,
                                   abuf ? FG_EXPR_VALUE_BUF : 0);
        return rc == 0 || rc == FG_ETOOLONG;
    }
    case FG_N_IN:
        fg_eval_value(e, node->a, ctx, &a, abuf);
        if (!a.present)
            return 0;
        for (int i = e->nodes[node->b].a; i >= 0; i = e->nodes[i].next) {
            fg_eval_value(e, i, ctx, &b, NULL);
            if (fg_compare(FG_CMP_EQ, &a, &b))
                return 1;
        }
        return 0;
    case FG_N_CALL: {
        fg_eval_value(e, node->a, ctx, &a, abuf);
        fg_eval_value(e, node->b, ctx, &b, bbuf);
        if (!a.present || !b.present)
            return 0;
        const fg_str *str = &a.str, *x = &b.str;
        if (x->len > str->len)
            return 0;
        if (x->len == 0)
            return 1;
        switch (node->op) {
        case FG_CALL_STARTS:
            return memcmp(str->ptr, x->ptr, x->len) == 0;
        case FG_CALL_ENDS:
            return memcmp(str->ptr + str->len - x->len, x->ptr, x->len) == 0;
        default:
            for (size_t i = 0; i + x->len <= str->len; i++)
                if (str->ptr[i] == x->ptr[0] && memcmp(str->ptr + i, x->ptr, x->len) == 0)
                    return 1;
            return 0;
        }
    }
    default: /* FG_N_CMP of values */
        fg_eval_value(e, node->a, ctx, &a, abuf);
        fg_eval_value(e, node->b, ctx, &b, bbuf);
        return fg_compare(node->op, &a, &b);
    }
}

static FG_LEAF int fg_eval_leaf_baggage(const fg_expr *e, const fg_node *node,
                                        const fg_ctx *ctx) {
    char abuf[FG_EXPR_VALUE_BUF], bbuf[FG_EXPR_VALUE_BUF];
    return fg_eval_leaf(e, node, ctx, abuf, bbuf);
}

static int fg_eval_leaf_any(const fg_expr *e, const fg_node *node, const fg_ctx *ctx) {
    return node->big ? fg_eval_leaf_baggage(e, node, ctx)
                     : fg_eval_leaf(e, node, ctx, NULL, NULL);
}

/* A bool node's value. Depth is bounded by the compiler's FG_EXPR_MAX_DEPTH. */
static int fg_eval(const fg_expr *e, int n, const fg_ctx *ctx) {
    const fg_node *node = &e->nodes[n];
    switch (node->kind) {
    case FG_N_BOOL:
        return node->b_val;
    case FG_N_NOT:
        return !fg_eval(e, node->a, ctx);
    case FG_N_AND:
        return fg_eval(e, node->a, ctx) && fg_eval(e, node->b, ctx);
    case FG_N_OR:
        return fg_eval(e, node->a, ctx) || fg_eval(e, node->b, ctx);
    case FG_N_CMP:
        if (node->fast == FG_FAST_META_STR) {
            fg_str v;
            const fg_str *lit = &e->nodes[node->b].str;
            if (!fg__meta(ctx, &e->nodes[node->a].str, &v))
                return 0; /* absent: false, whatever the operator */
            int eq = v.len == lit->len && fg__memeq(v.ptr, lit->ptr, v.len);
            return node->op == FG_CMP_EQ ? eq : !eq;
        }
        if (node->fast == FG_FAST_META_NUM) {
            fg_str v;
            fg_num x;
            if (!fg__meta(ctx, &e->nodes[node->a].str, &v) ||
                fg_parse_num(v.ptr, v.len, &x) != 0)
                return 0;
            return fg_cmp_result(node->op, fg_num_cmp(&x, &e->nodes[node->b].num));
        }
        if (e->nodes[node->a].type == FG_T_BOOL) /* bool == bool, bool != bool */
            return (fg_eval(e, node->a, ctx) == fg_eval(e, node->b, ctx)) ==
                   (node->op == FG_CMP_EQ);
        return fg_eval_leaf_any(e, node, ctx);
    case FG_N_HAS:
    case FG_N_IN:
    case FG_N_CALL:
        return fg_eval_leaf_any(e, node, ctx);
    default:
        return 0;
    }
}

int fg_expr_eval(const fg_expr *expr, const fg_ctx *ctx) {
    if (expr == NULL || ctx == NULL)
        return FG_EINVAL;
    return fg_eval(expr, expr->root, ctx);
}
