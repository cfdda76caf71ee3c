/*
 * pattern.c — Python `re` patterns (weight-decay exclusion) on PCRE2.
 *
 * Keras compiles the exclusion names with Python's `re` and searches variable names with
 * re.search. PCRE2's syntax is close to Python's but not the same, and where the two read the same
 * text differently a plain pcre2_compile would silently give other answers (`\Z`, `{,n}`, `a{}`,
 * `\s` over \x1c-\x1f, (?i) on the dotless i, `\x4`, `[[:alpha:]]`, ...). So the pattern is parsed
 * here exactly as Python 3.11's re/_parser.py parses it (same grammar, same errors, same group
 * numbering), then written out as a PCRE2 pattern that spells every construct explicitly: literals
 * as \x{...}, classes as explicit ranges and Unicode properties, anchors and word boundaries as
 * lookarounds, case-insensitivity as explicit classes, flags applied here. PCRE2 never sees an
 * option letter, an escape whose meaning differs, or a Python-only construct. What cannot be
 * written exactly is refused (cuoptim.h, cuoptimExcludeFromWeightDecay, lists it).
 *
 * Resources: the pattern length, the nesting depth and repeat counts are bounded here; PCRE2
 * compiles within a memory budget (every allocation goes through budget_malloc) and matches under
 * match, depth and heap limits. A search that hits a limit is an error, never "no match".
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pattern.h"

/* ---- limits ------------------------------------------------------------------------------------ */

#define MAX_NESTING 200                  /* groups and lookarounds within each other */
#define MAX_TRANSLATED_BYTES ((size_t)1 << 20)
#define MAX_REPEAT_COUNT 65535u          /* PCRE2's largest {n} */
#define MAX_GROUPS 65535                 /* PCRE2's most capturing groups */
#define PCRE2_NEST_LIMIT 1000            /* the translation adds a few levels per Python level */
#define MATCH_LIMIT 1000000u             /* about 15 ms of backtracking per name */
#define DEPTH_LIMIT 10000u
#define HEAP_LIMIT_KIB 16384u
#define MEMORY_BUDGET ((size_t)64 << 20) /* every PCRE2 allocation of one pattern */

/* Python's constants (sys.maxsize-independent on every 64-bit build). */
#define PY_MAXREPEAT 4294967295u
#define PY_MAXCODE 4294967295u
#define WIDTH_MAX UINT64_MAX

/* ---- Python's flags (re/_constants.py), by letter ---------------------------------------------- */

enum {
  F_IGNORECASE = 1,
  F_LOCALE = 2,
  F_MULTILINE = 4,
  F_DOTALL = 8,
  F_VERBOSE = 16,
  F_ASCII = 32,
  F_TEMPLATE = 64,
  F_UNICODE = 128
};
#define TYPE_FLAGS (F_ASCII | F_LOCALE | F_UNICODE)

static int flag_of(uint32_t c) {
  switch (c) {
    case 'i': return F_IGNORECASE;
    case 'L': return F_LOCALE;
    case 'm': return F_MULTILINE;
    case 's': return F_DOTALL;
    case 'x': return F_VERBOSE;
    case 'a': return F_ASCII;
    case 't': return F_TEMPLATE;
    case 'u': return F_UNICODE;
    default: return 0;
  }
}

/* ---- the parsed pattern (Python's SubPattern, as a tree) --------------------------------------- */

typedef enum {
  N_LITERAL,
  N_ANY,
  N_IN,
  N_AT,
  N_BRANCH,
  N_GROUP,
  N_ATOMIC,
  N_REPEAT,
  N_GROUPREF,
  N_GROUPREF_EXISTS,
  N_ASSERT
} NodeOp;
typedef enum { AT_BEGINNING, AT_BEGINNING_STRING, AT_BOUNDARY, AT_NON_BOUNDARY, AT_END, AT_END_STRING } AtCode;
typedef enum { CAT_DIGIT, CAT_NOT_DIGIT, CAT_SPACE, CAT_NOT_SPACE, CAT_WORD, CAT_NOT_WORD } Category;
typedef enum { REPEAT_GREEDY, REPEAT_LAZY, REPEAT_POSSESSIVE } RepeatKind;

/* A member of a character set: a range of code points (lo == hi for one) or a category. */
typedef struct SetItem {
  int is_category;
  Category category;
  uint32_t lo, hi;
  struct SetItem *next;
} SetItem;

typedef struct Node Node;
typedef struct {
  Node *first, *last;
} Seq;

typedef struct Alt {
  Seq seq;
  struct Alt *next;
} Alt;

struct Node {
  NodeOp op;
  long pos;               /* code-point offset in the pattern, for messages */
  Node *prev, *next;      /* siblings in a Seq */
  uint32_t c;             /* N_LITERAL */
  AtCode at;              /* N_AT */
  SetItem *items;         /* N_IN */
  int negate;             /* N_IN */
  Alt *alts;              /* N_BRANCH */
  Seq body;               /* N_GROUP, N_ATOMIC, N_REPEAT, N_ASSERT; the "yes" of N_GROUPREF_EXISTS */
  Seq no;                 /* N_GROUPREF_EXISTS */
  int has_no;             /* N_GROUPREF_EXISTS: a "no" branch (possibly empty) is present */
  int group;              /* N_GROUP (0: not capturing), N_GROUPREF, N_GROUPREF_EXISTS */
  int add_flags, del_flags; /* N_GROUP */
  uint32_t min, max;      /* N_REPEAT; max == PY_MAXREPEAT: unbounded */
  RepeatKind kind;        /* N_REPEAT */
  int behind, negative;   /* N_ASSERT */
};

/* Every allocation of a parse, freed together. */
typedef struct Block {
  struct Block *next;
  max_align_t data[];
} Block;

/* ---- the parser: re/_parser.py's Tokenizer, State and functions -------------------------------- */

enum { T_END, T_CHAR, T_ESC }; /* a character, or a backslash and the character after it */
typedef struct {
  int kind;
  uint32_t c;
} Token;

typedef struct {
  uint64_t lo, hi;
  int closed;
} GroupWidth;

typedef struct {
  char *name;
  int gid;
} GroupName;

typedef struct {
  const uint32_t *cp; /* the pattern's code points */
  long n;
  long index;         /* of the code point after `next` */
  Token next;
  int flags;          /* state.flags: the global flags */
  int groups;         /* state.groups: groups opened + 1 */
  GroupWidth *widths; /* [groups] */
  int widths_capacity;
  GroupName *names;
  int num_names, names_capacity;
  int lookbehindgroups; /* -1: None */
  int depth;
  Block *blocks;
  /* The first error; later ones are ignored (errors are sticky: every loop ends at T_END). */
  int failed;
  cuoptimStatus_t status;
  char *why;
  size_t why_size;
  long position;
} Parser;

static void fail_at(Parser *P, long position, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void fail_at(Parser *P, long position, const char *fmt, ...) {
  if (P->failed) return;
  P->failed = 1;
  P->status = CUOPTIM_STATUS_INVALID_VALUE;
  P->position = position;
  va_list args;
  va_start(args, fmt);
  vsnprintf(P->why, P->why_size, fmt, args);
  va_end(args);
  P->next.kind = T_END; /* end every loop */
  P->index = P->n;
}

static void fail_memory(Parser *P) {
  fail_at(P, -1, "out of host memory");
  P->status = CUOPTIM_STATUS_ALLOC_FAILED;
}

static void *pool_alloc(Parser *P, size_t bytes) {
  Block *b = calloc(1, sizeof(Block) + bytes);
  if (!b) {
    fail_memory(P);
    return NULL;
  }
  b->next = P->blocks;
  P->blocks = b;
  return b->data;
}

static void pool_free(Parser *P) {
  while (P->blocks) {
    Block *next = P->blocks->next;
    free(P->blocks);
    P->blocks = next;
  }
  free(P->widths);
  free(P->names);
}

static void advance(Parser *P) {
  if (P->failed || P->index >= P->n) {
    P->next.kind = T_END;
    return;
  }
  uint32_t c = P->cp[P->index];
  if (c == '\\') {
    if (P->index + 1 >= P->n) {
      fail_at(P, P->n - 1, "bad escape (end of pattern)");
      return;
    }
    P->next.kind = T_ESC;
    P->next.c = P->cp[P->index + 1];
    P->index += 2;
  } else {
    P->next.kind = T_CHAR;
    P->next.c = c;
    P->index += 1;
  }
}

static long tell(const Parser *P) {
  return P->index - (P->next.kind == T_END ? 0 : P->next.kind == T_ESC ? 2 : 1);
}

static void seek(Parser *P, long index) {
  P->index = index;
  advance(P);
}

static Token get(Parser *P) {
  Token t = P->next;
  advance(P);
  return t;
}

static int next_is(const Parser *P, uint32_t c) { return P->next.kind == T_CHAR && P->next.c == c; }

static int match(Parser *P, uint32_t c) {
  if (!next_is(P, c)) return 0;
  advance(P);
  return 1;
}

static int is_digit(uint32_t c) { return c >= '0' && c <= '9'; }
static int is_octal(uint32_t c) { return c >= '0' && c <= '7'; }
static int is_hex(uint32_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
static int is_ascii_letter(uint32_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_ascii_alnum(uint32_t c) { return is_ascii_letter(c) || is_digit(c); }
static int hex_value(uint32_t c) { return is_digit(c) ? (int)(c - '0') : (int)((c | 0x20) - 'a' + 10); }

/* source.getwhile(n, charset): up to n unescaped characters of the set; their count. */
static int get_while(Parser *P, int n, int (*in_set)(uint32_t), uint32_t *out) {
  int k = 0;
  while (k < n && P->next.kind == T_CHAR && in_set(P->next.c)) out[k++] = get(P).c;
  return k;
}

/* source.getuntil(terminator, name), as ASCII text. Python's names are str.isidentifier(); only
 * ASCII ones are accepted here (cuoptim has no Unicode identifier tables): *non_ascii is set for
 * the others, and escapes come back as "\x" so that they fail the identifier check as in Python. */
static char *get_until(Parser *P, uint32_t terminator, const char *what, int *non_ascii) {
  /* Each token gives at most as many bytes as it has code points: measure up to the terminator,
   * so that many names do not each cost the length of the pattern. */
  long capacity = 2; /* `next` */
  for (long k = P->index; k < P->n && P->cp[k] != terminator; k++, capacity++)
    if (P->cp[k] == '\\') k++, capacity++;
  char *text = pool_alloc(P, (size_t)capacity + 1);
  if (!text) return NULL;
  long len = 0;
  *non_ascii = 0;
  for (;;) {
    Token t = get(P);
    if (P->failed) return NULL;
    if (t.kind == T_END) {
      if (len == 0)
        fail_at(P, tell(P), "missing %s", what);
      else
        fail_at(P, tell(P) - len, "missing %c, unterminated name", (char)terminator);
      return NULL;
    }
    if (t.kind == T_CHAR && t.c == terminator) {
      if (len == 0) fail_at(P, tell(P) - 1, "missing %s", what);
      break;
    }
    if (t.kind == T_ESC) text[len++] = '\\';
    if (t.c >= 0x80) *non_ascii = 1;
    text[len++] = t.c < 0x80 ? (char)t.c : '?';
  }
  text[len] = '\0';
  return P->failed ? NULL : text;
}

/* A token as UTF-8 text, for messages. */
static const char *token_text(Token t, char text[16]) {
  char *o = text;
  if (t.kind == T_ESC) *o++ = '\\';
  uint32_t c = t.c;
  if (c < 0x80) {
    *o++ = (char)c;
  } else if (c < 0x800) {
    *o++ = (char)(0xC0 | (c >> 6));
    *o++ = (char)(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    *o++ = (char)(0xE0 | (c >> 12));
    *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
    *o++ = (char)(0x80 | (c & 0x3F));
  } else {
    *o++ = (char)(0xF0 | (c >> 18));
    *o++ = (char)(0x80 | ((c >> 12) & 0x3F));
    *o++ = (char)(0x80 | ((c >> 6) & 0x3F));
    *o++ = (char)(0x80 | (c & 0x3F));
  }
  *o = '\0';
  return text;
}

static int is_identifier(const char *s) {
  if (!(is_ascii_letter((unsigned char)s[0]) || s[0] == '_')) return 0;
  for (const char *c = s + 1; *c; c++)
    if (!(is_ascii_alnum((unsigned char)*c) || *c == '_')) return 0;
  return 1;
}

/* source.checkgroupname. */
static int check_group_name(Parser *P, const char *name, int non_ascii, long offset) {
  if (non_ascii) {
    fail_at(P, tell(P) - (long)strlen(name) - offset,
            "group name with non-ASCII characters: not supported (cuoptim accepts ASCII identifiers)");
    return 0;
  }
  if (!is_identifier(name)) {
    fail_at(P, tell(P) - (long)strlen(name) - offset, "bad character in group name '%s'", name);
    return 0;
  }
  return 1;
}

static int find_group_name(const Parser *P, const char *name) {
  for (int i = 0; i < P->num_names; i++)
    if (strcmp(P->names[i].name, name) == 0) return P->names[i].gid;
  return -1;
}

static int check_group(const Parser *P, int gid) { return gid < P->groups && P->widths[gid].closed; }

/* state.checklookbehindgroup. */
static void check_lookbehind_group(Parser *P, int gid, long position) {
  if (P->lookbehindgroups < 0) return;
  if (!check_group(P, gid))
    fail_at(P, position, "cannot refer to an open group");
  else if (gid >= P->lookbehindgroups)
    fail_at(P, position, "cannot refer to group defined in the same lookbehind subpattern");
}

/* state.opengroup: the new group's number, or -1. */
static int open_group(Parser *P, const char *name, long position) {
  int gid = P->groups;
  if (gid > MAX_GROUPS) {
    fail_at(P, position, "more than %d capturing groups: not supported (PCRE2's limit)", MAX_GROUPS);
    return -1;
  }
  if (gid >= P->widths_capacity) {
    int capacity = P->widths_capacity * 2;
    GroupWidth *widths = realloc(P->widths, (size_t)capacity * sizeof *widths);
    if (!widths) {
      fail_memory(P);
      return -1;
    }
    P->widths = widths;
    P->widths_capacity = capacity;
  }
  memset(&P->widths[gid], 0, sizeof P->widths[gid]);
  P->groups++;
  if (name) {
    int ogid = find_group_name(P, name);
    if (ogid >= 0) {
      fail_at(P, position, "redefinition of group name '%s' as group %d; was group %d", name, gid, ogid);
      return -1;
    }
    if (P->num_names == P->names_capacity) {
      int capacity = P->names_capacity ? P->names_capacity * 2 : 8;
      GroupName *names = realloc(P->names, (size_t)capacity * sizeof *names);
      if (!names) {
        fail_memory(P);
        return -1;
      }
      P->names = names;
      P->names_capacity = capacity;
    }
    P->names[P->num_names].name = (char *)name;
    P->names[P->num_names].gid = gid;
    P->num_names++;
  }
  return gid;
}

static Node *new_node(Parser *P, NodeOp op, long pos) {
  Node *n = pool_alloc(P, sizeof *n);
  if (n) {
    n->op = op;
    n->pos = pos;
  }
  return n;
}

static void append(Seq *s, Node *n) {
  if (!n) return;
  n->prev = s->last;
  n->next = NULL;
  if (s->last)
    s->last->next = n;
  else
    s->first = n;
  s->last = n;
}

static Node *literal_node(Parser *P, uint32_t c, long pos) {
  Node *n = new_node(P, N_LITERAL, pos);
  if (n) n->c = c;
  return n;
}

static Node *at_node(Parser *P, AtCode at, long pos) {
  Node *n = new_node(P, N_AT, pos);
  if (n) n->at = at;
  return n;
}

static SetItem *range_item(Parser *P, uint32_t lo, uint32_t hi) {
  SetItem *item = pool_alloc(P, sizeof *item);
  if (item) {
    item->lo = lo;
    item->hi = hi;
  }
  return item;
}

static SetItem *category_item(Parser *P, Category category) {
  SetItem *item = pool_alloc(P, sizeof *item);
  if (item) {
    item->is_category = 1;
    item->category = category;
  }
  return item;
}

static Node *category_node(Parser *P, Category category, long pos) {
  Node *n = new_node(P, N_IN, pos);
  if (n) n->items = category_item(P, category);
  return n;
}

/* ---- widths: SubPattern.getwidth ---------------------------------------------------------------- */

static uint64_t add_width(uint64_t a, uint64_t b) { return a > WIDTH_MAX - b ? WIDTH_MAX : a + b; }
static uint64_t mul_width(uint64_t a, uint64_t b) { return b != 0 && a > WIDTH_MAX / b ? WIDTH_MAX : a * b; }

static void seq_width(const Parser *P, const Seq *s, uint64_t *lo_out, uint64_t *hi_out);

static void node_width(const Parser *P, const Node *n, uint64_t *lo, uint64_t *hi) {
  uint64_t i = 0, j = 0;
  switch (n->op) {
    case N_LITERAL:
    case N_ANY:
    case N_IN: i = j = 1; break;
    case N_BRANCH:
      i = WIDTH_MAX;
      for (const Alt *a = n->alts; a; a = a->next) {
        uint64_t l, h;
        seq_width(P, &a->seq, &l, &h);
        if (l < i) i = l;
        if (h > j) j = h;
      }
      break;
    case N_GROUP:
    case N_ATOMIC: seq_width(P, &n->body, &i, &j); break;
    case N_REPEAT: {
      uint64_t l, h;
      seq_width(P, &n->body, &l, &h);
      i = mul_width(l, n->min);
      j = (n->max == PY_MAXREPEAT && h) ? WIDTH_MAX : mul_width(h, n->max);
      break;
    }
    case N_GROUPREF:
      i = P->widths[n->group].lo;
      j = P->widths[n->group].hi;
      break;
    case N_GROUPREF_EXISTS: {
      seq_width(P, &n->body, &i, &j);
      if (n->has_no) {
        uint64_t l, h;
        seq_width(P, &n->no, &l, &h);
        if (l < i) i = l;
        if (h > j) j = h;
      } else {
        i = 0;
      }
      break;
    }
    case N_AT:
    case N_ASSERT: break;
  }
  *lo = add_width(*lo, i);
  *hi = add_width(*hi, j);
}

static void seq_width(const Parser *P, const Seq *s, uint64_t *lo_out, uint64_t *hi_out) {
  uint64_t lo = 0, hi = 0;
  for (const Node *n = s->first; n; n = n->next) node_width(P, n, &lo, &hi);
  *lo_out = lo;
  *hi_out = hi;
}

/* ---- parsing: re/_parser.py, function by function ----------------------------------------------- */

static Seq parse_sub(Parser *P, int verbose, int nested);
static Seq parse_seq(Parser *P, int verbose, int nested, int first);

/* The escapes that stand for one character alike inside and outside a set: the control letters,
 * \x, \u, \U (and \N, refused). 1: *value is the character; 0: `c` is none of these; -1: failed. */
static int code_escape(Parser *P, uint32_t c, long start, uint32_t *value) {
  static const char letters[] = "afnrtv\\";
  static const uint32_t codes[] = {7, 12, 10, 13, 9, 11, '\\'};
  for (int k = 0; letters[k]; k++)
    if (c == (uint32_t)letters[k]) {
      *value = codes[k];
      return 1;
    }
  if (c == 'x' || c == 'u' || c == 'U') {
    uint32_t digits[8];
    int want = c == 'x' ? 2 : c == 'u' ? 4 : 8;
    int got = get_while(P, want, is_hex, digits);
    uint32_t code = 0;
    for (int k = 0; k < got; k++) code = code * 16 + (uint32_t)hex_value(digits[k]);
    if (got != want) {
      fail_at(P, start, "incomplete escape \\%c", (char)c);
      return -1;
    }
    if (code > 0x10FFFF) {
      fail_at(P, start, "bad escape \\U%08X", code);
      return -1;
    }
    *value = code;
    return 1;
  }
  if (c == 'N') {
    if (!match(P, '{'))
      fail_at(P, tell(P), "missing {");
    else
      fail_at(P, start, "\\N{...} (a character by its Unicode name): not supported (cuoptim has no Unicode name "
                        "table; write \\uXXXX)");
    return -1;
  }
  return 0;
}

/* _escape: an escape outside a set. `start`: the position of the backslash. */
static Node *parse_escape(Parser *P, uint32_t c, long start) {
  switch (c) {
    case 'A': return at_node(P, AT_BEGINNING_STRING, start);
    case 'b': return at_node(P, AT_BOUNDARY, start);
    case 'B': return at_node(P, AT_NON_BOUNDARY, start);
    case 'Z': return at_node(P, AT_END_STRING, start);
    case 'd': return category_node(P, CAT_DIGIT, start);
    case 'D': return category_node(P, CAT_NOT_DIGIT, start);
    case 's': return category_node(P, CAT_SPACE, start);
    case 'S': return category_node(P, CAT_NOT_SPACE, start);
    case 'w': return category_node(P, CAT_WORD, start);
    case 'W': return category_node(P, CAT_NOT_WORD, start);
    default: break;
  }
  uint32_t code;
  int coded = code_escape(P, c, start, &code);
  if (coded != 0) return coded > 0 ? literal_node(P, code, start) : NULL;
  uint32_t digits[8];
  if (c == '0') {
    int got = get_while(P, 2, is_octal, digits);
    uint32_t value = 0;
    for (int k = 0; k < got; k++) value = value * 8 + (digits[k] - '0');
    return literal_node(P, value, start);
  }
  if (is_digit(c)) {
    /* An octal escape or a group reference. */
    uint32_t group = c - '0';
    if (P->next.kind == T_CHAR && is_digit(P->next.c)) {
      uint32_t second = get(P).c;
      if (is_octal(c) && is_octal(second) && P->next.kind == T_CHAR && is_octal(P->next.c)) {
        uint32_t third = get(P).c;
        uint32_t value = (c - '0') * 64 + (second - '0') * 8 + (third - '0');
        if (value > 0377) {
          fail_at(P, start, "octal escape value \\%c%c%c outside of range 0-0o377", (char)c, (char)second,
                  (char)third);
          return NULL;
        }
        return literal_node(P, value, start);
      }
      group = group * 10 + (second - '0');
    }
    if ((int)group < P->groups) {
      if (!check_group(P, (int)group)) {
        fail_at(P, start, "cannot refer to an open group");
        return NULL;
      }
      check_lookbehind_group(P, (int)group, start);
      Node *n = new_node(P, N_GROUPREF, start);
      if (n) n->group = (int)group;
      return P->failed ? NULL : n;
    }
    fail_at(P, start + 1, "invalid group reference %u", group);
    return NULL;
  }
  if (is_ascii_letter(c)) {
    fail_at(P, start, "bad escape \\%c", (char)c);
    return NULL;
  }
  return literal_node(P, c, start);
}

/* _class_escape: an escape inside a set; a literal (lo == hi) or a category. */
static SetItem *parse_class_escape(Parser *P, uint32_t c, long start) {
  switch (c) {
    case 'b': return range_item(P, 8, 8); /* backspace inside a set only */
    case 'd': return category_item(P, CAT_DIGIT);
    case 'D': return category_item(P, CAT_NOT_DIGIT);
    case 's': return category_item(P, CAT_SPACE);
    case 'S': return category_item(P, CAT_NOT_SPACE);
    case 'w': return category_item(P, CAT_WORD);
    case 'W': return category_item(P, CAT_NOT_WORD);
    default: break;
  }
  uint32_t code;
  int coded = code_escape(P, c, start, &code);
  if (coded != 0) return coded > 0 ? range_item(P, code, code) : NULL;
  uint32_t digits[8];
  if (is_octal(c)) {
    int got = get_while(P, 2, is_octal, digits);
    uint32_t value = c - '0';
    for (int k = 0; k < got; k++) value = value * 8 + (digits[k] - '0');
    if (value > 0377) {
      fail_at(P, start, "octal escape value outside of range 0-0o377");
      return NULL;
    }
    return range_item(P, value, value);
  }
  if (is_ascii_letter(c) || is_digit(c)) {
    fail_at(P, start, "bad escape \\%c", (char)c);
    return NULL;
  }
  return range_item(P, c, c);
}

/* A character set, after its "[". */
static Node *parse_set(Parser *P, long here) {
  Node *n = new_node(P, N_IN, here);
  if (!n) return NULL;
  n->negate = match(P, '^');
  SetItem *head = NULL, **tail = &head;
  for (;;) {
    long item_start = tell(P);
    Token this = get(P);
    if (P->failed) return NULL;
    if (this.kind == T_END) {
      fail_at(P, here, "unterminated character set");
      return NULL;
    }
    if (this.kind == T_CHAR && this.c == ']' && head) break;
    SetItem *code1 = this.kind == T_ESC ? parse_class_escape(P, this.c, item_start) : range_item(P, this.c, this.c);
    if (!code1) return NULL;
    if (match(P, '-')) {
      long that_start = tell(P);
      Token that = get(P);
      if (P->failed) return NULL;
      if (that.kind == T_END) {
        fail_at(P, here, "unterminated character set");
        return NULL;
      }
      if (that.kind == T_CHAR && that.c == ']') {
        *tail = code1;
        tail = &code1->next;
        SetItem *dash = range_item(P, '-', '-');
        if (!dash) return NULL;
        *tail = dash;
        tail = &dash->next;
        break;
      }
      SetItem *code2 = that.kind == T_ESC ? parse_class_escape(P, that.c, that_start) : range_item(P, that.c, that.c);
      if (!code2) return NULL;
      if (code1->is_category || code2->is_category || code2->lo < code1->lo) {
        fail_at(P, item_start, "bad character range");
        return NULL;
      }
      code1->hi = code2->lo;
    }
    *tail = code1;
    tail = &code1->next;
  }
  n->items = head;
  return n;
}

/* Unescaped decimal digits, read as Python's int() (saturating above PY_MAXREPEAT) into *value;
 * their count. */
static long read_digits(Parser *P, uint64_t *value) {
  long count = 0;
  *value = 0;
  while (P->next.kind == T_CHAR && is_digit(P->next.c)) {
    *value = *value * 10 + (get(P).c - '0');
    if (*value > PY_MAXREPEAT) *value = (uint64_t)PY_MAXREPEAT + 1;
    count++;
  }
  return count;
}

/* A repeat character `c` at `here` (after it): wraps the last item of `s`. */
static void parse_repeat(Parser *P, Seq *s, uint32_t c, long here) {
  uint32_t min = 0, max = PY_MAXREPEAT;
  long at = here - 1;
  if (c == '?') {
    max = 1;
  } else if (c == '+') {
    min = 1;
  } else if (c == '{') {
    if (next_is(P, '}')) {
      append(s, literal_node(P, '{', at));
      return;
    }
    uint64_t lo = 0, hi = 0;
    long nlo = read_digits(P, &lo), nhi;
    if (match(P, ',')) {
      nhi = read_digits(P, &hi);
    } else {
      hi = lo;
      nhi = nlo;
    }
    if (!match(P, '}')) {
      append(s, literal_node(P, '{', at));
      seek(P, here);
      return;
    }
    if (nlo) {
      if (lo >= PY_MAXREPEAT) {
        fail_at(P, at, "the repetition number is too large");
        return;
      }
      min = (uint32_t)lo;
    }
    if (nhi) {
      uint64_t v = hi;
      if (v >= PY_MAXREPEAT) {
        fail_at(P, at, "the repetition number is too large");
        return;
      }
      max = (uint32_t)v;
      if (max < min) {
        fail_at(P, at, "min repeat greater than max repeat");
        return;
      }
    }
  }
  if (!s->last || s->last->op == N_AT) {
    fail_at(P, at, "nothing to repeat");
    return;
  }
  if (s->last->op == N_REPEAT) {
    fail_at(P, at, "multiple repeat");
    return;
  }
  if (min > MAX_REPEAT_COUNT || (max != PY_MAXREPEAT && max > MAX_REPEAT_COUNT)) {
    fail_at(P, at, "repeat count above %u: not supported (PCRE2's limit)", MAX_REPEAT_COUNT);
    return;
  }
  Node *item = s->last;
  Node *r = new_node(P, N_REPEAT, at);
  if (!r) return;
  r->min = min;
  r->max = max;
  r->kind = match(P, '?') ? REPEAT_LAZY : match(P, '+') ? REPEAT_POSSESSIVE : REPEAT_GREEDY;
  /* Replace the item by the repeat, which holds it. */
  s->last = item->prev;
  if (s->last)
    s->last->next = NULL;
  else
    s->first = NULL;
  append(&r->body, item);
  append(s, r);
}

/* _parse_flags, after "(?" and its first character `c`. Returns 1 for global flags "(?aiLmsux)",
 * 0 for scoped ones "(?aiLmsux-imsx:" (in *add, *del), -1 on error. */
static int parse_flags(Parser *P, Token c, int *add, int *del) {
  *add = *del = 0;
  if (!(c.kind == T_CHAR && c.c == '-')) {
    for (;;) {
      int flag = flag_of(c.c);
      if (flag == F_LOCALE) {
        fail_at(P, tell(P), "bad inline flags: cannot use 'L' flag with a str pattern");
        return -1;
      }
      if (flag == F_TEMPLATE) {
        fail_at(P, tell(P) - 1, "the flag 't' (re.TEMPLATE, deprecated): not supported");
        return -1;
      }
      *add |= flag;
      if ((flag & TYPE_FLAGS) && (*add & TYPE_FLAGS) != flag) {
        fail_at(P, tell(P), "bad inline flags: flags 'a', 'u' and 'L' are incompatible");
        return -1;
      }
      c = get(P);
      if (c.kind == T_END) {
        fail_at(P, tell(P), "missing -, : or )");
        return -1;
      }
      if (c.kind == T_CHAR && (c.c == ')' || c.c == '-' || c.c == ':')) break;
      if (c.kind != T_CHAR || !flag_of(c.c)) {
        fail_at(P, tell(P) - 1, c.kind == T_CHAR && is_ascii_letter(c.c) ? "unknown flag" : "missing -, : or )");
        return -1;
      }
    }
  }
  if (c.c == ')') {
    P->flags |= *add;
    return 1;
  }
  if (c.c == '-') {
    c = get(P);
    if (c.kind == T_END) {
      fail_at(P, tell(P), "missing flag");
      return -1;
    }
    if (c.kind != T_CHAR || !flag_of(c.c)) {
      fail_at(P, tell(P) - 1, c.kind == T_CHAR && is_ascii_letter(c.c) ? "unknown flag" : "missing flag");
      return -1;
    }
    for (;;) {
      int flag = flag_of(c.c);
      if (flag & TYPE_FLAGS) {
        fail_at(P, tell(P), "bad inline flags: cannot turn off flags 'a', 'u' and 'L'");
        return -1;
      }
      if (flag == F_TEMPLATE) {
        fail_at(P, tell(P) - 1, "bad inline flags: cannot turn off global flag");
        return -1;
      }
      *del |= flag;
      c = get(P);
      if (c.kind == T_END) {
        fail_at(P, tell(P), "missing :");
        return -1;
      }
      if (c.kind == T_CHAR && c.c == ':') break;
      if (c.kind != T_CHAR || !flag_of(c.c)) {
        fail_at(P, tell(P) - 1, c.kind == T_CHAR && is_ascii_letter(c.c) ? "unknown flag" : "missing :");
        return -1;
      }
    }
  }
  if (*add & *del) {
    fail_at(P, tell(P) - 1, "bad inline flags: flag turned on and off");
    return -1;
  }
  return 0;
}

/* (?(id/name)yes|no), after "(?(". */
static Node *parse_conditional(Parser *P, int verbose, int nested, long start) {
  int non_ascii;
  char *condname = get_until(P, ')', "group name", &non_ascii);
  if (!condname) return NULL;
  long name_pos = tell(P) - (long)strlen(condname) - 1;
  int condgroup;
  if (!non_ascii && is_identifier(condname)) {
    condgroup = find_group_name(P, condname);
    if (condgroup < 0) {
      fail_at(P, name_pos, "unknown group name '%s'", condname);
      return NULL;
    }
  } else {
    int all_digits = condname[0] != '\0' && !non_ascii;
    for (const char *d = condname; *d; d++) all_digits = all_digits && is_digit((unsigned char)*d);
    if (!all_digits) {
      fail_at(P, name_pos,
              non_ascii ? "group name with non-ASCII characters: not supported (cuoptim accepts ASCII identifiers "
                          "and decimal numbers)"
                        : "bad character in group name '%s'",
              condname);
      return NULL;
    }
    long value = 0;
    for (const char *d = condname; *d && value <= MAX_GROUPS; d++) value = value * 10 + (*d - '0');
    if (value == 0) {
      fail_at(P, name_pos, "bad group number");
      return NULL;
    }
    condgroup = value > MAX_GROUPS ? MAX_GROUPS + 1 : (int)value;
  }
  /* Python resolves a reference to a group that is not closed yet (a later or an enclosing one) at
   * match time, by rules PCRE2 does not share: refused. */
  if (!check_group(P, condgroup)) {
    fail_at(P, name_pos, "(?(%s)...) refers to a group that is not closed before it: not supported", condname);
    return NULL;
  }
  check_lookbehind_group(P, condgroup, name_pos);
  Node *n = new_node(P, N_GROUPREF_EXISTS, start);
  if (!n || P->failed) return NULL;
  n->group = condgroup;
  n->body = parse_seq(P, verbose, nested + 1, 0);
  if (match(P, '|')) {
    n->no = parse_seq(P, verbose, nested + 1, 0);
    n->has_no = 1;
    if (next_is(P, '|')) {
      fail_at(P, tell(P), "conditional backref with more than two branches");
      return NULL;
    }
  }
  if (!match(P, ')')) {
    fail_at(P, start, "missing ), unterminated subpattern");
    return NULL;
  }
  return P->failed ? NULL : n;
}

/* A lookaround, after "(?=", "(?!", "(?<=" or "(?<!". */
static Node *parse_assert(Parser *P, int verbose, int nested, long start, int behind, int negative) {
  int lookbehindgroups = P->lookbehindgroups;
  if (behind && lookbehindgroups < 0) P->lookbehindgroups = P->groups;
  Seq p = parse_sub(P, verbose, nested + 1);
  if (behind && lookbehindgroups < 0) P->lookbehindgroups = -1;
  if (!match(P, ')')) {
    fail_at(P, start, "missing ), unterminated subpattern");
    return NULL;
  }
  if (behind) { /* _compiler.py's check */
    uint64_t lo, hi;
    seq_width(P, &p, &lo, &hi);
    if (lo > PY_MAXCODE) {
      fail_at(P, start, "looks too much behind");
      return NULL;
    }
    if (lo != hi) {
      fail_at(P, start, "look-behind requires fixed-width pattern");
      return NULL;
    }
  }
  Node *n = new_node(P, N_ASSERT, start);
  if (!n || P->failed) return NULL;
  n->body = p;
  n->behind = behind;
  n->negative = negative;
  return n;
}

/* "(": a group, a lookaround, a conditional, a comment, flags or a named reference. Appends to
 * `s`. `first`: at the very start of the pattern (global flags allowed). */
static void parse_paren(Parser *P, Seq *s, int *verbose, int nested, int first) {
  char text[16];
  long start = tell(P) - 1;
  int capture = 1, atomic = 0, add_flags = 0, del_flags = 0;
  const char *name = NULL;
  if (match(P, '?')) {
    Token c = get(P);
    if (c.kind == T_END) {
      fail_at(P, tell(P), "unexpected end of pattern");
      return;
    }
    int is_char = c.kind == T_CHAR;
    if (is_char && c.c == 'P') {
      int non_ascii;
      if (match(P, '<')) {
        char *group_name = get_until(P, '>', "group name", &non_ascii);
        if (!group_name || !check_group_name(P, group_name, non_ascii, 1)) return;
        name = group_name;
      } else if (match(P, '=')) {
        char *ref = get_until(P, ')', "group name", &non_ascii);
        if (!ref || !check_group_name(P, ref, non_ascii, 1)) return;
        long ref_pos = tell(P) - (long)strlen(ref) - 1;
        int gid = find_group_name(P, ref);
        if (gid < 0) {
          fail_at(P, ref_pos, "unknown group name '%s'", ref);
          return;
        }
        if (!check_group(P, gid)) {
          fail_at(P, ref_pos, "cannot refer to an open group");
          return;
        }
        check_lookbehind_group(P, gid, ref_pos);
        Node *n = new_node(P, N_GROUPREF, start);
        if (n) n->group = gid;
        if (!P->failed) append(s, n);
        return;
      } else {
        Token d = get(P);
        if (d.kind == T_END)
          fail_at(P, tell(P), "unexpected end of pattern");
        else
          fail_at(P, tell(P) - 1, "unknown extension ?P%s", token_text(d, text));
        return;
      }
    } else if (is_char && c.c == ':') {
      capture = 0;
    } else if (is_char && c.c == '#') {
      for (;;) {
        if (P->next.kind == T_END) {
          fail_at(P, start, "missing ), unterminated comment");
          return;
        }
        Token t = get(P);
        if (t.kind == T_CHAR && t.c == ')') break;
      }
      return;
    } else if (is_char && (c.c == '=' || c.c == '!' || c.c == '<')) {
      int behind = 0;
      uint32_t kind = c.c;
      if (c.c == '<') {
        Token d = get(P);
        if (d.kind == T_END) {
          fail_at(P, tell(P), "unexpected end of pattern");
          return;
        }
        if (!(d.kind == T_CHAR && (d.c == '=' || d.c == '!'))) {
          fail_at(P, tell(P) - 3, "unknown extension ?<%s: Python's named groups are (?P<name>...)",
                  token_text(d, text));
          return;
        }
        behind = 1;
        kind = d.c;
      }
      if (++P->depth > MAX_NESTING) {
        fail_at(P, start, "more than %d groups within each other: not supported", MAX_NESTING);
        return;
      }
      Node *n = parse_assert(P, *verbose, nested, start, behind, kind == '!');
      P->depth--;
      if (n) append(s, n);
      return;
    } else if (is_char && c.c == '(') {
      if (++P->depth > MAX_NESTING) {
        fail_at(P, start, "more than %d groups within each other: not supported", MAX_NESTING);
        return;
      }
      Node *n = parse_conditional(P, *verbose, nested, start);
      P->depth--;
      if (n) append(s, n);
      return;
    } else if (is_char && c.c == '>') {
      capture = 0;
      atomic = 1;
    } else if (is_char && (flag_of(c.c) || c.c == '-')) {
      int global = parse_flags(P, c, &add_flags, &del_flags);
      if (global < 0) return;
      if (global) {
        if (!first || s->first) {
          fail_at(P, start, "global flags not at the start of the expression");
          return;
        }
        *verbose = P->flags & F_VERBOSE;
        return;
      }
      capture = 0;
    } else {
      fail_at(P, tell(P) - 1, "unknown extension ?%s", token_text(c, text));
      return;
    }
  }
  int group = 0;
  if (capture) {
    group = open_group(P, name, start);
    if (group < 0) return;
  }
  if (++P->depth > MAX_NESTING) {
    fail_at(P, start, "more than %d groups within each other: not supported", MAX_NESTING);
    return;
  }
  int sub_verbose = (*verbose || (add_flags & F_VERBOSE)) && !(del_flags & F_VERBOSE);
  Seq p = parse_sub(P, sub_verbose, nested + 1);
  P->depth--;
  if (!match(P, ')')) {
    fail_at(P, start, "missing ), unterminated subpattern");
    return;
  }
  if (group) {
    seq_width(P, &p, &P->widths[group].lo, &P->widths[group].hi);
    P->widths[group].closed = 1;
  }
  Node *n = new_node(P, atomic ? N_ATOMIC : N_GROUP, start);
  if (!n) return;
  n->body = p;
  n->group = group;
  n->add_flags = add_flags;
  n->del_flags = del_flags;
  append(s, n);
}

static int is_special(uint32_t c) { return c < 0x80 && strchr(".\\[{()*+?^$|", (int)c) != NULL; }
static int is_whitespace(uint32_t c) { return c < 0x80 && c != 0 && strchr(" \t\n\r\v\f", (int)c) != NULL; }

/* _parse: a sequence, up to "|", ")" or the end. */
static Seq parse_seq(Parser *P, int verbose, int nested, int first) {
  Seq s = {NULL, NULL};
  for (;;) {
    if (P->failed) return s;
    Token this = P->next;
    if (this.kind == T_END) break;
    if (this.kind == T_CHAR && (this.c == '|' || this.c == ')')) break;
    long here = tell(P);
    advance(P);
    if (verbose && this.kind == T_CHAR) {
      if (is_whitespace(this.c)) continue;
      if (this.c == '#') {
        for (;;) {
          Token t = get(P);
          if (t.kind == T_END || (t.kind == T_CHAR && t.c == '\n')) break;
        }
        continue;
      }
    }
    if (this.kind == T_ESC) {
      Node *n = parse_escape(P, this.c, here);
      if (!n) return s;
      append(&s, n);
    } else if (!is_special(this.c)) {
      append(&s, literal_node(P, this.c, here));
    } else if (this.c == '[') {
      Node *n = parse_set(P, here);
      if (!n) return s;
      append(&s, n);
    } else if (this.c == '*' || this.c == '+' || this.c == '?' || this.c == '{') {
      parse_repeat(P, &s, this.c, here + 1);
    } else if (this.c == '.') {
      append(&s, new_node(P, N_ANY, here));
    } else if (this.c == '(') {
      parse_paren(P, &s, &verbose, nested, first);
    } else if (this.c == '^') {
      append(&s, at_node(P, AT_BEGINNING, here));
    } else if (this.c == '$') {
      append(&s, at_node(P, AT_END, here));
    }
  }
  return s;
}

/* _parse_sub: alternatives separated by "|". */
static Seq parse_sub(Parser *P, int verbose, int nested) {
  Alt *head = NULL, **tail = &head;
  int count = 0;
  for (;;) {
    Alt *a = pool_alloc(P, sizeof *a);
    if (!a) return (Seq){NULL, NULL};
    a->seq = parse_seq(P, verbose, nested + 1, !nested && count == 0);
    *tail = a;
    tail = &a->next;
    count++;
    if (P->failed || !match(P, '|')) break;
    if (!nested) verbose = P->flags & F_VERBOSE;
  }
  if (count == 1) return head->seq;
  Seq s = {NULL, NULL};
  Node *n = new_node(P, N_BRANCH, head->seq.first ? head->seq.first->pos : 0);
  if (n) n->alts = head;
  append(&s, n);
  return s;
}

/* ---- writing the PCRE2 pattern ------------------------------------------------------------------- */

typedef struct {
  char *text;
  size_t len, capacity;
  Parser *P; /* for errors */
} Writer;

static void put(Writer *w, const char *s) {
  if (w->P->failed) return;
  size_t n = strlen(s);
  if (w->len + n + 1 > w->capacity) {
    size_t capacity = w->capacity ? w->capacity * 2 : 256;
    while (capacity < w->len + n + 1) capacity *= 2;
    if (capacity > MAX_TRANSLATED_BYTES + 1) {
      fail_at(w->P, -1, "longer than %zu bytes once translated for PCRE2: not supported", MAX_TRANSLATED_BYTES);
      return;
    }
    char *grown = realloc(w->text, capacity);
    if (!grown) {
      fail_memory(w->P);
      return;
    }
    w->text = grown;
    w->capacity = capacity;
  }
  memcpy(w->text + w->len, s, n + 1);
  w->len += n;
}

static void put_char(Writer *w, uint32_t c) {
  char s[16];
  if (is_ascii_alnum(c))
    snprintf(s, sizeof s, "%c", (char)c);
  else
    snprintf(s, sizeof s, "\\x{%x}", c);
  put(w, s);
}

/* Python's \s for str patterns (str.isspace), as class content. PCRE2's \s differs: it lacks
 * \x1c-\x1f and has U+180E. */
#define SPACE_UNICODE                                                                     \
  "\\x{9}-\\x{d}\\x{1c}-\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}" \
  "\\x{205f}\\x{3000}"
#define SPACE_ASCII "\\x{9}-\\x{d}\\x{20}"
/* Python's \w for str patterns (str.isalnum() or "_") and \d (Unicode decimal digits), as
 * Unicode properties. PCRE2's own \w would add Mn and Pc from 10.43 on. */
#define WORD_UNICODE "\\p{L}\\p{N}_"
#define WORD_ASCII "0-9A-Za-z_"
#define DIGIT_UNICODE "\\p{Nd}"
#define DIGIT_ASCII "0-9"

/* The ranges of a set that lie outside ASCII. */
typedef struct {
  uint32_t lo, hi;
} Range;

/* Python's lowercase of an ASCII code point (ascii_tolower and, on ASCII, unicode_tolower). */
static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Writes a range of code points as class content; the surrogates, which no UTF-8 name holds, are
 * left out (PCRE2 refuses them in UTF mode). */
static void put_range(Writer *w, uint32_t lo, uint32_t hi) {
  if (lo <= 0xD7FF && hi >= 0xD800) {
    put_range(w, lo, 0xD7FF);
    if (hi >= 0xE000) put_range(w, 0xE000, hi);
    return;
  }
  if (lo >= 0xD800 && lo <= 0xDFFF) {
    if (hi < 0xE000) return;
    lo = 0xE000;
  }
  put_char(w, lo);
  if (hi != lo) {
    put(w, "-");
    put_char(w, hi);
  }
}

/* A character set as PCRE2 text: Python's IN (or LITERAL / NOT_LITERAL) under `flags`.
 *
 * Python matches a set as the union of its items, negated with "^". Items that PCRE2 can write
 * inside one class go to `positive`; the complement-of-a-class categories (\S, and \W, \D under
 * ASCII) are kept apart, since a class cannot hold them with other items, and the whole is written
 * as an alternation (or, negated, as lookaheads).
 *
 * Case-insensitive sets follow _compiler.py: with (?i) a character ch matches when lower(ch) is in
 * the set of the items' lowercases and their "extra cases" (_casefix.py). For ASCII patterns under
 * Unicode rules that set adds, beyond the ASCII case pairs: U+0131 (dotless i) and U+0130 (lowercase
 * i) for i, U+212A (Kelvin sign, lowercase k) for k, U+017F (long s) for s. Non-ASCII characters in a
 * case-insensitive Unicode pattern would need Python's case tables: refused. */
static void put_set(Writer *w, const SetItem *items, int negate, int flags, long pos) {
  int ascii = (flags & F_ASCII) != 0, ignorecase = (flags & F_IGNORECASE) != 0;
  unsigned char in_ascii[128] = {0};
  /* Class content of each category, and whether a set holds it as is or as its complement. */
  const char *category_content[3] = {ascii ? DIGIT_ASCII : DIGIT_UNICODE, ascii ? SPACE_ASCII : SPACE_UNICODE,
                                     ascii ? WORD_ASCII : WORD_UNICODE};
  int positive[3] = {0, 0, 0}, complemented[3] = {0, 0, 0}, not_digit_property = 0, num_ranges = 0;
  for (const SetItem *it = items; it; it = it->next) {
    if (it->is_category) {
      int kind = it->category / 2, is_not = it->category % 2; /* DIGIT, SPACE, WORD; then NOT_ */
      if (is_not && kind == 0 && !ascii)
        not_digit_property = 1; /* \P{Nd}: one property, fits in a class */
      else if (is_not)
        complemented[kind] = 1;
      else
        positive[kind] = 1;
      continue;
    }
    for (uint32_t c = it->lo; c <= it->hi && c < 128; c++) in_ascii[c] = 1;
    if (it->hi >= 128) {
      if (ignorecase && !ascii) {
        fail_at(w->P, pos,
                "a non-ASCII character under (?i): not supported (its case-insensitive meaning needs Python's "
                "Unicode case tables)");
        return;
      }
      num_ranges++;
    }
  }
  int extra_dotless_i = 0, extra_kelvin = 0, extra_long_s = 0;
  if (ignorecase) {
    unsigned char lowered[128] = {0};
    for (uint32_t c = 0; c < 128; c++)
      if (in_ascii[c]) lowered[ascii_lower(c)] = 1;
    for (uint32_t c = 0; c < 128; c++) in_ascii[c] = lowered[ascii_lower(c)];
    if (!ascii) {
      extra_dotless_i = lowered['i'];
      extra_kelvin = lowered['k'];
      extra_long_s = lowered['s'];
    }
  }

  /* The positive class content. */
  Writer content = {NULL, 0, 0, w->P};
  put(&content, "");
  for (uint32_t c = 0; c < 128; c++) {
    if (!in_ascii[c]) continue;
    uint32_t end = c;
    while (end + 1 < 128 && in_ascii[end + 1]) end++;
    put_range(&content, c, end);
    c = end;
  }
  if (num_ranges)
    for (const SetItem *it = items; it; it = it->next)
      if (!it->is_category && it->hi >= 128) put_range(&content, it->lo < 128 ? 128 : it->lo, it->hi);
  if (extra_dotless_i) put(&content, "\\x{130}\\x{131}");
  if (extra_long_s) put(&content, "\\x{17f}");
  if (extra_kelvin) put(&content, "\\x{212a}");
  for (int k = 0; k < 3; k++)
    if (positive[k]) put(&content, category_content[k]);
  if (not_digit_property) put(&content, "\\P{Nd}");
  const char *negated_categories[3];
  int num_negated = 0;
  for (int k = 0; k < 3; k++)
    if (complemented[k]) negated_categories[num_negated++] = category_content[k];
  if (w->P->failed) {
    free(content.text);
    return;
  }
  int has_positive = content.len > 0;

  if (!negate) {
    if (num_negated == 0) {
      if (has_positive) {
        put(w, "[");
        put(w, content.text);
        put(w, "]");
      } else {
        put(w, "(?!)");
      }
    } else {
      put(w, "(?:");
      if (has_positive) {
        put(w, "[");
        put(w, content.text);
        put(w, "]|");
      }
      for (int k = 0; k < num_negated; k++) {
        put(w, k ? "|[^" : "[^");
        put(w, negated_categories[k]);
        put(w, "]");
      }
      put(w, ")");
    }
  } else if (num_negated == 0) {
    if (has_positive) {
      put(w, "[^");
      put(w, content.text);
      put(w, "]");
    } else {
      put(w, "(?s:.)");
    }
  } else { /* not (positive or not N1 or not N2 ...) = not positive and N1 and N2 ... */
    put(w, "(?:");
    if (has_positive) {
      put(w, "(?![");
      put(w, content.text);
      put(w, "])");
    }
    for (int k = 0; k < num_negated; k++) {
      put(w, k + 1 < num_negated ? "(?=[" : "[");
      put(w, negated_categories[k]);
      put(w, k + 1 < num_negated ? "])" : "]");
    }
    put(w, ")");
  }
  free(content.text);
}

static void put_seq(Writer *w, const Seq *s, int flags);

/* Python's word boundary (\b) and its negation; names are never empty, so the "empty string has no
 * boundary" rule of _sre does not arise. */
static void put_boundary(Writer *w, int negated, int flags) {
  const char *word = flags & F_ASCII ? "[" WORD_ASCII "]" : "[" WORD_UNICODE "]";
  char text[256];
  if (!negated)
    snprintf(text, sizeof text, "(?:(?<=%s)(?!%s)|(?<!%s)(?=%s))", word, word, word, word);
  else
    snprintf(text, sizeof text, "(?:(?<=%s)(?=%s)|(?<!%s)(?!%s))", word, word, word, word);
  put(w, text);
}

static void put_at(Writer *w, AtCode at, int flags) {
  int multiline = (flags & F_MULTILINE) != 0;
  switch (at) {
    case AT_BEGINNING: put(w, multiline ? "(?:\\A|(?<=\\n))" : "\\A"); break;
    case AT_BEGINNING_STRING: put(w, "\\A"); break;
    case AT_END: put(w, multiline ? "(?=\\n|\\z)" : "(?=\\n?\\z)"); break;
    case AT_END_STRING: put(w, "\\z"); break; /* Python's \Z is PCRE2's \z */
    case AT_BOUNDARY: put_boundary(w, 0, flags); break;
    case AT_NON_BOUNDARY: put_boundary(w, 1, flags); break;
  }
}

static void put_quantifier(Writer *w, const Node *n) {
  char text[64];
  if (n->max == PY_MAXREPEAT)
    snprintf(text, sizeof text, n->min == 0 ? "*" : n->min == 1 ? "+" : "{%u,}", n->min);
  else if (n->min == n->max)
    snprintf(text, sizeof text, "{%u}", n->min);
  else
    snprintf(text, sizeof text, "{%u,%u}", n->min, n->max);
  put(w, text);
  if (n->kind == REPEAT_LAZY) put(w, "?");
  if (n->kind == REPEAT_POSSESSIVE) put(w, "+");
}

/* _compiler.py's _combine_flags. */
static int combine_flags(int flags, int add, int del) {
  if (add & TYPE_FLAGS) flags &= ~TYPE_FLAGS;
  return (flags | add) & ~del;
}

static void put_node(Writer *w, const Node *n, int flags) {
  char text[64];
  switch (n->op) {
    case N_LITERAL: {
      if (flags & F_IGNORECASE) {
        SetItem item = {0, CAT_DIGIT, n->c, n->c, NULL};
        put_set(w, &item, 0, flags, n->pos);
      } else if (n->c >= 0xD800 && n->c <= 0xDFFF) {
        put(w, "(?!)"); /* a lone surrogate: in no UTF-8 name */
      } else {
        put_char(w, n->c);
      }
      break;
    }
    case N_ANY: put(w, flags & F_DOTALL ? "(?s:.)" : "[^\\n]"); break;
    case N_IN: put_set(w, n->items, n->negate, flags, n->pos); break;
    case N_AT: put_at(w, n->at, flags); break;
    case N_BRANCH:
      put(w, "(?:");
      for (const Alt *a = n->alts; a; a = a->next) {
        if (a != n->alts) put(w, "|");
        put_seq(w, &a->seq, flags);
      }
      put(w, ")");
      break;
    case N_GROUP:
      /* Python's search skips ahead with a first-character test compiled under the global flags,
       * so a group switching between ASCII and Unicode rules is not applied consistently there
       * (re.search(r"(?a:\W)", "\u017f") finds nothing, re.match does). */
      if ((n->add_flags & TYPE_FLAGS) && (n->add_flags & TYPE_FLAGS) != (flags & TYPE_FLAGS)) {
        fail_at(w->P, n->pos, "(?a:...) or (?u:...) switching between ASCII and Unicode rules: not supported");
        return;
      }
      put(w, n->group ? "(" : "(?:");
      put_seq(w, &n->body, combine_flags(flags, n->add_flags, n->del_flags));
      put(w, ")");
      break;
    case N_ATOMIC:
      put(w, "(?>");
      put_seq(w, &n->body, flags);
      put(w, ")");
      break;
    case N_REPEAT:
      put(w, "(?:");
      put_seq(w, &n->body, flags);
      put(w, ")");
      put_quantifier(w, n);
      break;
    case N_GROUPREF:
      /* Python compares lower() of each character; PCRE2's caseless back-references use other case
       * rules (the long s, the Kelvin sign, ASCII mode). */
      if (flags & F_IGNORECASE) {
        fail_at(w->P, n->pos, "a back-reference under (?i): not supported");
        return;
      }
      snprintf(text, sizeof text, "\\g{%d}", n->group);
      put(w, text);
      break;
    case N_GROUPREF_EXISTS:
      snprintf(text, sizeof text, "(?(%d)", n->group);
      put(w, text);
      put_seq(w, &n->body, flags);
      if (n->has_no) {
        put(w, "|");
        put_seq(w, &n->no, flags);
      }
      put(w, ")");
      break;
    case N_ASSERT:
      put(w, n->behind ? (n->negative ? "(?<!" : "(?<=") : (n->negative ? "(?!" : "(?="));
      put_seq(w, &n->body, flags);
      put(w, ")");
      break;
  }
}

static void put_seq(Writer *w, const Seq *s, int flags) {
  for (const Node *n = s->first; n && !w->P->failed; n = n->next) put_node(w, n, flags);
}

/* ---- UTF-8 --------------------------------------------------------------------------------------- */

/* Decodes strict UTF-8 (no overlong forms, no surrogates); the number of code points, or -1 with
 * *bad at the code-point offset of the first bad sequence. */
static long decode_utf8(const unsigned char *s, uint32_t *out, long *bad) {
  long n = 0;
  while (*s) {
    uint32_t c = *s;
    int extra = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    if (extra < 0) goto invalid;
    c &= extra == 0 ? 0x7F : extra == 1 ? 0x1F : extra == 2 ? 0x0F : 0x07;
    for (int k = 1; k <= extra; k++) {
      if ((s[k] & 0xC0) != 0x80) goto invalid;
      c = (c << 6) | (s[k] & 0x3F);
    }
    static const uint32_t least[4] = {0, 0x80, 0x800, 0x10000};
    if (c < least[extra] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) goto invalid;
    if (out) out[n] = c;
    n++;
    s += extra + 1;
  }
  return n;
invalid:
  *bad = n;
  return -1;
}

/* ---- PCRE2 --------------------------------------------------------------------------------------- */

typedef struct {
  size_t used, limit;
  int exceeded;
} MemoryBudget;

/* Each block starts with its size, so that budget_free can give it back. */
typedef union {
  size_t size;
  max_align_t align;
} BlockHeader;

static void *budget_malloc(PCRE2_SIZE size, void *data) {
  MemoryBudget *budget = data;
  if (size > budget->limit - budget->used) {
    budget->exceeded = 1;
    return NULL;
  }
  BlockHeader *block = malloc(sizeof(BlockHeader) + size);
  if (!block) return NULL;
  block->size = size;
  budget->used += size;
  return block + 1;
}

static void budget_free(void *p, void *data) {
  if (!p) return;
  MemoryBudget *budget = data;
  BlockHeader *block = (BlockHeader *)p - 1;
  budget->used -= block->size;
  free(block);
}

struct cuoptimPattern {
  MemoryBudget budget; /* first: PCRE2 keeps a pointer to it until everything below is freed */
  pcre2_general_context *general;
  pcre2_match_context *match;
  pcre2_code *code;
  pcre2_match_data *data;
};

void cuoptim_pattern_free(cuoptimPattern *p) {
  if (!p) return;
  pcre2_match_data_free(p->data);
  pcre2_code_free(p->code);
  pcre2_match_context_free(p->match);
  pcre2_general_context_free(p->general);
  free(p);
}

static cuoptimStatus_t refuse(char *why, size_t why_size, cuoptimStatus_t status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static cuoptimStatus_t refuse(char *why, size_t why_size, cuoptimStatus_t status, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(why, why_size, fmt, args);
  va_end(args);
  return status;
}

/* Compiles the translated text under the memory budget and prepares the match limits. */
static cuoptimStatus_t compile_translated(const char *text, size_t len, cuoptimPattern **out, char *why,
                                          size_t why_size) {
  cuoptimPattern *p = calloc(1, sizeof *p);
  if (!p) return refuse(why, why_size, CUOPTIM_STATUS_ALLOC_FAILED, "out of host memory");
  p->budget.limit = MEMORY_BUDGET;
  p->general = pcre2_general_context_create(budget_malloc, budget_free, &p->budget);
  pcre2_compile_context *compile = p->general ? pcre2_compile_context_create(p->general) : NULL;
  p->match = p->general ? pcre2_match_context_create(p->general) : NULL;
  if (!compile || !p->match) {
    pcre2_compile_context_free(compile);
    cuoptim_pattern_free(p);
    return refuse(why, why_size, CUOPTIM_STATUS_ALLOC_FAILED, "out of host memory");
  }
  pcre2_set_max_pattern_length(compile, MAX_TRANSLATED_BYTES);
  pcre2_set_parens_nest_limit(compile, PCRE2_NEST_LIMIT);
  pcre2_set_newline(compile, PCRE2_NEWLINE_LF);
  pcre2_set_match_limit(p->match, MATCH_LIMIT);
  pcre2_set_depth_limit(p->match, DEPTH_LIMIT);
  pcre2_set_heap_limit(p->match, HEAP_LIMIT_KIB);
  int error = 0;
  PCRE2_SIZE offset = 0;
  /* UTF: code points, as Python's str. No UCP, no caseless, no option letters: the translation
   * spells out every class and flag, so PCRE2's own Unicode rules for \w, \b or (?i) never apply. */
  p->code = pcre2_compile((PCRE2_SPTR)text, len, PCRE2_UTF | PCRE2_NEVER_BACKSLASH_C, &error, &offset, compile);
  pcre2_compile_context_free(compile);
  if (!p->code) {
    cuoptimStatus_t status = CUOPTIM_STATUS_INVALID_VALUE;
    if (p->budget.exceeded) {
      refuse(why, why_size, status, "compiling it needs more than %zu MiB: not supported", MEMORY_BUDGET >> 20);
    } else if (error == PCRE2_ERROR_HEAP_FAILED) {
      status = refuse(why, why_size, CUOPTIM_STATUS_ALLOC_FAILED, "out of host memory");
    } else {
      PCRE2_UCHAR reason[256];
      pcre2_get_error_message(error, reason, sizeof reason);
      refuse(why, why_size, status, "not supported by PCRE2, which runs it: %s", (const char *)reason);
    }
    cuoptim_pattern_free(p);
    return status;
  }
  p->data = pcre2_match_data_create_from_pattern(p->code, p->general);
  if (!p->data) {
    cuoptim_pattern_free(p);
    return refuse(why, why_size, CUOPTIM_STATUS_ALLOC_FAILED, "out of host memory");
  }
  *out = p;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_pattern_compile(const char *python, cuoptimPattern **pattern, char *why, size_t why_size,
                                        long *position) {
  *position = -1;
  size_t bytes = strlen(python);
  if (bytes > CUOPTIM_PATTERN_MAX_BYTES)
    return refuse(why, why_size, CUOPTIM_STATUS_INVALID_VALUE, "%zu bytes long: at most %d", bytes,
                  CUOPTIM_PATTERN_MAX_BYTES);
  long bad = 0;
  long n = decode_utf8((const unsigned char *)python, NULL, &bad);
  if (n < 0) {
    *position = bad;
    return refuse(why, why_size, CUOPTIM_STATUS_INVALID_VALUE, "not valid UTF-8");
  }
  uint32_t *cp = malloc((size_t)(n + 1) * sizeof *cp);
  if (!cp) return refuse(why, why_size, CUOPTIM_STATUS_ALLOC_FAILED, "out of host memory");
  decode_utf8((const unsigned char *)python, cp, &bad);

  Parser P;
  memset(&P, 0, sizeof P);
  P.cp = cp;
  P.n = n;
  P.groups = 1;
  P.lookbehindgroups = -1;
  P.why = why;
  P.why_size = why_size;
  P.status = CUOPTIM_STATUS_SUCCESS;
  P.widths_capacity = 16;
  P.widths = calloc((size_t)P.widths_capacity, sizeof *P.widths);
  if (!P.widths) fail_memory(&P);
  advance(&P);
  Seq root = parse_sub(&P, 0, 0);
  if (!P.failed && (P.flags & F_ASCII) && (P.flags & F_UNICODE))
    fail_at(&P, -1, "ASCII and UNICODE flags are incompatible");
  if (!P.failed && P.next.kind != T_END) fail_at(&P, tell(&P), "unbalanced parenthesis");
  int flags = P.flags & F_ASCII ? P.flags : P.flags | F_UNICODE;
  Writer w = {NULL, 0, 0, &P};
  if (!P.failed) put_seq(&w, &root, flags);
  if (!P.failed) put(&w, "");
  cuoptimStatus_t status = P.failed ? P.status : CUOPTIM_STATUS_SUCCESS;
  if (P.failed) *position = P.position;
  pool_free(&P);
  free(cp);
  if (status == CUOPTIM_STATUS_SUCCESS) status = compile_translated(w.text, w.len, pattern, why, why_size);
  free(w.text);
  return status;
}

cuoptimStatus_t cuoptim_pattern_search(cuoptimPattern *p, const char *subject, int *found, char *why,
                                       size_t why_size) {
  int rc = pcre2_match(p->code, (PCRE2_SPTR)subject, strlen(subject), 0, 0, p->data, p->match);
  if (rc >= 0) {
    *found = 1;
    return CUOPTIM_STATUS_SUCCESS;
  }
  if (rc == PCRE2_ERROR_NOMATCH) {
    *found = 0;
    return CUOPTIM_STATUS_SUCCESS;
  }
  if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
      (rc == PCRE2_ERROR_NOMEMORY && p->budget.exceeded))
    return refuse(why, why_size, CUOPTIM_STATUS_INVALID_VALUE,
                  "the search backtracks beyond cuoptim's limits (%u steps, %u KiB): rewrite the pattern "
                  "without nested or ambiguous repeats",
                  MATCH_LIMIT, HEAP_LIMIT_KIB);
  if (rc == PCRE2_ERROR_NOMEMORY) return refuse(why, why_size, CUOPTIM_STATUS_ALLOC_FAILED, "out of host memory");
  if (rc <= PCRE2_ERROR_UTF8_ERR1 && rc >= PCRE2_ERROR_UTF8_ERR21)
    return refuse(why, why_size, CUOPTIM_STATUS_INVALID_VALUE, "the name is not valid UTF-8");
  PCRE2_UCHAR reason[256];
  pcre2_get_error_message(rc, reason, sizeof reason);
  return refuse(why, why_size, CUOPTIM_STATUS_INTERNAL_ERROR, "PCRE2 failed: %s", (const char *)reason);
}
