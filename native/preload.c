// Helpers for fuse-native, which the project loads but does not build. The two below come first; further
// down, the same interposition answers for libfuse's reply functions (attribute caching), its request loop
// and channel (requests of up to 1 MiB), and some of fuse-native's operations (the kernel's
// security.capability query, the flush of a read-only descriptor, libfuse's attribute request right after
// a create, with what the daemon handed over through noteCreated, and releases, whose handles the daemon
// takes later through takeReleased). answered() counts those answers, and trimMalloc() gives freed malloc
// memory back to the system.
//
// loadGlobal(path) loads a shared library with RTLD_GLOBAL and keeps it loaded, so that an addon loaded
// later (fuse-native) resolves its libfuse.so.2 dependency to it. process.dlopen cannot do this: it unloads
// any library that does not register a Node module.
//
// interpose() makes this addon's fuse_new() the one fuse-native calls, which adjusts fuse-native's table of
// operations. New files belong to the caller (see give_to_caller). getxattr, flush and the fgetattr right
// after a create may be answered here (see getxattr_quick, flush_quick and fgetattr_quick). And the table lacks
// flag_utime_omit_ok, so libfuse 2 silently drops a change of one timestamp alone
// (touch -a, touch -m, utimensat with UTIME_OMIT: it returns success and changes nothing). This fuse_new
// sets the flag on a copy of the table and wraps utimens: fuse-native turns times into milliseconds, where
// UTIME_NOW and UTIME_OMIT look alike, so UTIME_NOW becomes the current time here and only UTIME_OMIT
// reaches JavaScript as the marker (0 s, UTIME_OMIT ns).
#define _GNU_SOURCE
#define FUSE_USE_VERSION 29
#define _FILE_OFFSET_BITS 64
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <node_api.h>
#include <uv.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

typedef struct fuse *(*fuse_new_fn) (struct fuse_chan *, struct fuse_args *, const struct fuse_operations *, size_t, void *);

static int interposed = 0;
// Set when fuse-native's fuse_new came here: the rest of this file is then in force.
static int took_over = 0;
static void *libfuse_symbol (const char *name, const char *version);
static void resolve_replies (void);
static struct fuse_operations wrapped_ops;
static int (*inner_utimens) (const char *, const struct timespec[2]) = NULL;
static int (*inner_getattr) (const char *, struct stat *) = NULL;
static int (*inner_chown) (const char *, uid_t, gid_t) = NULL;
static int (*inner_create) (const char *, mode_t, struct fuse_file_info *) = NULL;
static int (*inner_mkdir) (const char *, mode_t) = NULL;
static int (*inner_mknod) (const char *, mode_t, dev_t) = NULL;
static int (*inner_symlink) (const char *, const char *) = NULL;
static int (*inner_getxattr) (const char *, const char *, char *, size_t) = NULL;
static int (*inner_open) (const char *, struct fuse_file_info *) = NULL;
static int (*inner_flush) (const char *, struct fuse_file_info *) = NULL;
static int (*inner_release) (const char *, struct fuse_file_info *) = NULL;
static int (*inner_fgetattr) (const char *, struct stat *, struct fuse_file_info *) = NULL;
static int (*inner_rename) (const char *, const char *) = NULL;
static int (*inner_link) (const char *, const char *) = NULL;
// The request the thread is serving (its kernel opcode, 0 when not known), set by fuse_session_process_buf.
static __thread uint32_t serving = 0;
#define KERNEL_FUSE_GETATTR 3

// libfuse 2 keeps an open file whose name was unlinked or renamed over under a hidden name of its own.
#define HIDDEN_PREFIX "/.fuse_hidden"
static int is_hidden_path (const char *path) {
  const char *slash = path != NULL ? strrchr(path, '/') : NULL;
  return slash != NULL && strncmp(slash, HIDDEN_PREFIX, strlen(HIDDEN_PREFIX)) == 0;
}

// The daemon counts one link more for a name libfuse hid, which libfuse's answer to FUSE_GETATTR takes
// off again (it takes its hidden name for a directory entry; the daemon's count never includes it), and
// marks such attributes (HIDDEN_COUNTED_DEV, as src/fs/filesystem.ts). The other requests that answer with
// them (SETATTR, LOOKUP) take nothing off, so it is taken off here. fuse-native turns a count of 0 into 1,
// which this brings back to 0 as well.
#define HIDDEN_COUNTED_DEV 2
static void count_hidden_name (struct stat *st) {
  if (!(st->st_dev & HIDDEN_COUNTED_DEV)) return;
  st->st_dev &= ~(dev_t) HIDDEN_COUNTED_DEV;
  if (serving != KERNEL_FUSE_GETATTR && st->st_nlink > 0) st->st_nlink--;
}

// fuse-native does not pass the caller's uid and gid to JavaScript, so the daemon makes new files its own.
// On the FUSE thread that serves the request they are known (fuse_get_context): when the caller is not the
// daemon's user and group, the new file is given to the caller through the filesystem's own chown, before
// libfuse answers the kernel. The group stays as the filesystem chose it (the parent's) when the parent
// directory has the set-group-ID bit.
typedef struct fuse_context *(*get_context_fn) (void);
// Looked up, not linked: this addon must load where libfuse is only fuse-native's own dependency. Set by
// fuse_new, before libfuse starts its threads.
static get_context_fn get_context = NULL;

// Returns whether it asked the filesystem to change the owner.
static int give_to_caller (const char *path) {
  struct fuse_context *c = get_context ? get_context() : NULL;
  if (c == NULL || !inner_chown || (c->uid == getuid() && c->gid == getgid())) return 0;
  gid_t gid = c->gid;
  // Paths from libfuse's path API are not bounded by PATH_MAX in deep trees.
  char *parent = inner_getattr ? strdup(path) : NULL;
  if (parent) {
    char *slash = strrchr(parent, '/');
    if (slash == parent) slash[1] = '\0';
    else if (slash) *slash = '\0';
    struct stat st;
    memset(&st, 0, sizeof(st));
    if (slash && inner_getattr(parent, &st) == 0 && (st.st_mode & S_ISGID)) gid = (gid_t) -1;
    free(parent);
  }
  inner_chown(path, c->uid, gid);
  return 1;
}

// libfuse answers a create with the new file's attributes, which it asks the filesystem for right after
// the create returned (fgetattr on the new handle): a second trip through the daemon's main thread for
// every new file. The daemon hands them over with its answer to the create instead (noteCreated, by the
// new handle); create_owned moves them to its own thread, where the fgetattr that follows takes them.
// Attributes the owner change made stale are dropped, and so is what the request did not use. A note
// stays in the table only if the create wrapper never ran after it was made, which a successful create
// always does.
#define CREATED_SLOTS 64
struct created_note { uint64_t fh; int used; struct stat st; };
static struct created_note created[CREATED_SLOTS];
static pthread_mutex_t created_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread struct created_note created_here;
static volatile uint64_t created_answered = 0;

static void note_created (uint64_t fh, const struct stat *st) {
  pthread_mutex_lock(&created_lock);
  struct created_note *free_slot = NULL;
  for (int i = 0; i < CREATED_SLOTS; i++) {
    if (created[i].used && created[i].fh == fh) { free_slot = &created[i]; break; }
    if (!created[i].used && free_slot == NULL) free_slot = &created[i];
  }
  // With every slot taken the note is left out, and libfuse asks the daemon as before.
  if (free_slot) {
    free_slot->fh = fh;
    free_slot->st = *st;
    free_slot->used = 1;
  }
  pthread_mutex_unlock(&created_lock);
}

static int take_created (uint64_t fh, struct created_note *out) {
  int found = 0;
  pthread_mutex_lock(&created_lock);
  for (int i = 0; i < CREATED_SLOTS; i++) {
    if (created[i].used && created[i].fh == fh) {
      *out = created[i];
      created[i].used = 0;
      found = 1;
      break;
    }
  }
  pthread_mutex_unlock(&created_lock);
  return found;
}

static int create_owned (const char *path, mode_t mode, struct fuse_file_info *fi) {
  created_here.used = 0;
  int r = inner_create(path, mode, fi);
  if (r != 0) return r;
  struct created_note note;
  int noted = take_created(fi->fh, &note);
  if (give_to_caller(path)) noted = 0;
  if (noted) created_here = note;
  return r;
}

static int fgetattr_quick (const char *path, struct stat *st, struct fuse_file_info *fi) {
  if (created_here.used && fi != NULL && fi->fh == created_here.fh) {
    created_here.used = 0;
    *st = created_here.st;
    __sync_fetch_and_add(&created_answered, 1);
    return 0;
  }
  int r = inner_fgetattr(path, st, fi);
  if (r == 0) count_hidden_name(st);
  return r;
}

static int getattr_counted (const char *path, struct stat *st) {
  int r = inner_getattr(path, st);
  if (r == 0) count_hidden_name(st);
  return r;
}

static int mkdir_owned (const char *path, mode_t mode) {
  int r = inner_mkdir(path, mode);
  if (r == 0) give_to_caller(path);
  return r;
}

static int mknod_owned (const char *path, mode_t mode, dev_t dev) {
  int r = inner_mknod(path, mode, dev);
  if (r == 0) give_to_caller(path);
  return r;
}

static int symlink_owned (const char *target, const char *path) {
  int r = inner_symlink(target, path);
  if (r == 0) give_to_caller(path);
  return r;
}

// Before every write to a regular file Linux asks the filesystem for the file's security.capability
// attribute, to drop it if present (file_remove_privs; FUSE does not let the kernel remember the answer):
// a round trip through the daemon's main thread per write request, one in seven of the requests a new
// small file costs. While no file of the filesystem has that attribute (the daemon says so through
// setNoCapabilities, and takes it back before storing one), the answer is given here: no such attribute.
static volatile int no_capabilities = 0;
#define CAPABILITY_XATTR "security.capability"

static volatile uint64_t capability_answered = 0;

static int getxattr_quick (const char *path, const char *name, char *value, size_t size) {
  if (no_capabilities && name != NULL && strcmp(name, CAPABILITY_XATTR) == 0) {
    __sync_fetch_and_add(&capability_answered, 1);
    return -ENODATA;
  }
  return inner_getxattr(path, name, value, size);
}

// close(2) sends FUSE_FLUSH and then FUSE_RELEASE. The filesystem's flush commits the writes made
// through a descriptor, so close can promise them; a descriptor opened read-only made none, and its
// flush is answered here instead of through the daemon's main thread (one round trip in five of reading
// a small file). libfuse 2 does not pass the open flags to flush, so the handles of read-only opens are
// kept in a set, from open until release.
#define READ_ONLY_BUCKETS 1024
struct read_only_fh { uint64_t fh; struct read_only_fh *next; };
static struct read_only_fh *read_only[READ_ONLY_BUCKETS];
static pthread_mutex_t read_only_lock = PTHREAD_MUTEX_INITIALIZER;

static struct read_only_fh **read_only_slot (uint64_t fh) {
  struct read_only_fh **p = &read_only[(fh ^ (fh >> 17)) % READ_ONLY_BUCKETS];
  while (*p && (*p)->fh != fh) p = &(*p)->next;
  return p;
}

static int serving_node_shared (void);

static int open_noted (const char *path, struct fuse_file_info *fi) {
  int r = inner_open(path, fi);
  // An append goes where the kernel's size of this name's inode says, and the kernel copies the bytes into
  // that inode's page cache there; the daemon appends at the file's real end. When the file changed size
  // through another of its names, the two differ and the cache would hold the bytes at the wrong place
  // (random operations found it). Appending descriptors of files with more than one kernel inode
  // (drop_siblings) therefore bypass the page cache: they read and write through the daemon.
  if (r == 0 && (fi->flags & O_APPEND) && (fi->flags & O_ACCMODE) != O_RDONLY && serving_node_shared()) fi->direct_io = 1;
  if (r != 0 || (fi->flags & O_ACCMODE) != O_RDONLY) return r;
  struct read_only_fh *e = malloc(sizeof(*e));
  if (!e) return r;
  pthread_mutex_lock(&read_only_lock);
  struct read_only_fh **p = read_only_slot(fi->fh);
  if (*p) {
    free(e);
  } else {
    e->fh = fi->fh;
    e->next = NULL;
    *p = e;
  }
  pthread_mutex_unlock(&read_only_lock);
  return r;
}

static volatile uint64_t flush_answered = 0;

static int flush_quick (const char *path, struct fuse_file_info *fi) {
  pthread_mutex_lock(&read_only_lock);
  int known = *read_only_slot(fi->fh) != NULL;
  pthread_mutex_unlock(&read_only_lock);
  if (!known) return inner_flush(path, fi);
  __sync_fetch_and_add(&flush_answered, 1);
  return 0;
}

// Releases answered here, once the daemon asked for it (deferReleases): the kernel sends RELEASE after
// close(2) returned and ignores the answer, so nothing waits for the daemon's work on it (dropping the
// handle, tidying the file's write-back data). The handle goes on a list that the daemon takes
// (takeReleased) before each request it handles, and every 50 ms, which saves the main thread one
// request in four of writing a small file and one in three of reading it. A handle stays the daemon's
// until it took the list, so its number is not given to a new open meanwhile.
static volatile int defer_releases = 0;
static pthread_mutex_t released_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *released = NULL;
static size_t released_cap = 0;
static volatile size_t released_len = 0;
static volatile uint64_t release_answered = 0;

static int release_deferred (uint64_t fh) {
  pthread_mutex_lock(&released_lock);
  if (released_len == released_cap) {
    size_t cap = released_cap ? released_cap * 2 : 256;
    uint64_t *grown = realloc(released, cap * sizeof(*grown));
    if (!grown) {
      pthread_mutex_unlock(&released_lock);
      return 0;
    }
    released = grown;
    released_cap = cap;
  }
  released[released_len] = fh;
  __atomic_store_n(&released_len, released_len + 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&released_lock);
  __sync_fetch_and_add(&release_answered, 1);
  return 1;
}

// The handle leaves the set before the filesystem can give its number to a new open.
static int release_noted (const char *path, struct fuse_file_info *fi) {
  pthread_mutex_lock(&read_only_lock);
  struct read_only_fh **p = read_only_slot(fi->fh);
  struct read_only_fh *e = *p;
  if (e) *p = e->next;
  pthread_mutex_unlock(&read_only_lock);
  free(e);
  if (defer_releases && release_deferred(fi->fh)) return 0;
  return inner_release(path, fi);
}

// A rename onto a name that is open: libfuse 2 first renames the target to a hidden name of its own
// (.fuse_hidden...), which keeps the open descriptors working, and then renames the source onto the freed
// name. When source and target are two names of one file, POSIX says the rename changes nothing; here
// the target's entry would go to the hidden name and the source's would take its place, so the file
// would lose the source name. rename_same_file notes the hidden name within the
// thread's FUSE_RENAME request, and when the source turns out to be the same file (same inode number)
// the target gets its name back as a link instead, and the source name stays. The hidden name itself is
// the daemon's (not a directory entry, not counted in the link count), and goes at the last close as for
// any hidden file.
#define KERNEL_FUSE_RENAME 12
static __thread char *hid_from = NULL;
static __thread char *hid_to = NULL;

static void forget_hidden (void) {
  free(hid_from);
  free(hid_to);
  hid_from = hid_to = NULL;
}

static int rename_same_file (const char *from, const char *to) {
  if (serving != KERNEL_FUSE_RENAME) return inner_rename(from, to);
  if (hid_from != NULL && strcmp(to, hid_from) == 0) {
    struct stat a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    int same = inner_getattr(from, &a) == 0 && inner_getattr(hid_to, &b) == 0 && a.st_ino == b.st_ino;
    // Should the link fail, the rename goes ahead as libfuse meant it rather than leave the name empty.
    int r = same && inner_link(hid_to, to) == 0 ? 0 : inner_rename(from, to);
    forget_hidden();
    return r;
  }
  int r = inner_rename(from, to);
  if (r == 0 && is_hidden_path(to)) {
    forget_hidden();
    hid_from = strdup(from);
    hid_to = strdup(to);
    if (hid_from == NULL || hid_to == NULL) forget_hidden();
  }
  return r;
}

static int utimens_now (const char *path, const struct timespec tv[2]) {
  struct timespec t[2] = { tv[0], tv[1] };
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  for (int i = 0; i < 2; i++) {
    if (t[i].tv_nsec == UTIME_NOW) t[i] = now;
  }
  return inner_utimens(path, t);
}

// fuse-native's call to fuse_new comes here; the real one is libfuse 2's (see libfuse_symbol).
__attribute__((visibility("default")))
struct fuse *fuse_new (struct fuse_chan *ch, struct fuse_args *args, const struct fuse_operations *op, size_t op_size, void *user_data) {
  fuse_new_fn real = (fuse_new_fn) libfuse_symbol("fuse_new", "FUSE_2.6");
  if (!real) return NULL;
  if (!interposed || op_size > sizeof(wrapped_ops)) return real(ch, args, op, op_size, user_data);
  // Looked up here, before libfuse starts its threads, rather than on first use.
  resolve_replies();
  get_context = (get_context_fn) libfuse_symbol("fuse_get_context", "FUSE_2.8");
  took_over = 1;
  memset(&wrapped_ops, 0, sizeof(wrapped_ops));
  memcpy(&wrapped_ops, op, op_size);
  if (wrapped_ops.utimens) {
    inner_utimens = wrapped_ops.utimens;
    wrapped_ops.utimens = utimens_now;
    wrapped_ops.flag_utime_omit_ok = 1;
  }
  if ((inner_getxattr = wrapped_ops.getxattr)) wrapped_ops.getxattr = getxattr_quick;
  if (wrapped_ops.open && wrapped_ops.flush && wrapped_ops.release) {
    inner_open = wrapped_ops.open;
    inner_flush = wrapped_ops.flush;
    inner_release = wrapped_ops.release;
    wrapped_ops.open = open_noted;
    wrapped_ops.flush = flush_quick;
    wrapped_ops.release = release_noted;
  }
  inner_getattr = wrapped_ops.getattr;
  inner_chown = wrapped_ops.chown;
  if (inner_getattr) wrapped_ops.getattr = getattr_counted;
  if (inner_getattr && wrapped_ops.rename && wrapped_ops.link) {
    inner_rename = wrapped_ops.rename;
    inner_link = wrapped_ops.link;
    wrapped_ops.rename = rename_same_file;
  }
  if ((inner_create = wrapped_ops.create)) {
    wrapped_ops.create = create_owned;
    if ((inner_fgetattr = wrapped_ops.fgetattr)) wrapped_ops.fgetattr = fgetattr_quick;
  }
  if (inner_chown) {
    if ((inner_mkdir = wrapped_ops.mkdir)) wrapped_ops.mkdir = mkdir_owned;
    if ((inner_mknod = wrapped_ops.mknod)) wrapped_ops.mknod = mknod_owned;
    if ((inner_symlink = wrapped_ops.symlink)) wrapped_ops.symlink = symlink_owned;
  }
  return real(ch, args, &wrapped_ops, sizeof(wrapped_ops), user_data);
}

static napi_value load_global (napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char path[4096];
  size_t len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof(path), &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "loadGlobal(path) needs a path string");
    return NULL;
  }
  if (dlopen(path, RTLD_NOW | RTLD_GLOBAL) == NULL) {
    const char *err = dlerror();
    napi_throw_error(env, NULL, err ? err : "dlopen failed");
    return NULL;
  }
  return NULL;
}

// Attribute caching. libfuse 2's path API gives every name of a file a kernel inode of its own, so with
// attributes cached in the kernel a link, unlink, chmod or chown through one name of a hard-linked file
// would show through its other names only when the cache expired. Replies about a file with more than one
// name get a timeout of 0. Directories and single-name files keep the mount's attribute timeout: every
// change to them goes through their one kernel inode, which the kernel updates or drops itself (setattr
// replies, writes, a link made from that name, unlink), and path walks and create-write-close sequences
// do not ask the daemon again. libfuse's own calls to these functions go through its PLT, so with this
// addon ahead of it in the global scope they come here.
typedef int (*reply_attr_fn) (fuse_req_t, const struct stat *, double);
typedef int (*reply_entry_fn) (fuse_req_t, const struct fuse_entry_param *);
typedef int (*reply_create_fn) (fuse_req_t, const struct fuse_entry_param *, const struct fuse_file_info *);
typedef int (*reply_write_fn) (fuse_req_t, size_t);

// A function of libfuse 2 by name and version (the versions fuse-native links against), wherever
// libfuse.so.2 was loaded from: as fuse-native's dependency, or globally by loadGlobal.
static void *libfuse_symbol (const char *name, const char *version) {
  void *lib = dlopen("libfuse.so.2", RTLD_NOW | RTLD_NOLOAD);
  void *fn = lib ? dlvsym(lib, name, version) : NULL;
  return fn ? fn : dlvsym(RTLD_NEXT, name, version);
}

typedef void (*process_buf_fn) (struct fuse_session *, const struct fuse_buf *, struct fuse_chan *);
typedef int (*notify_inval_inode_fn) (struct fuse_chan *, fuse_ino_t, off_t, off_t);
static process_buf_fn real_process_buf = NULL;
static notify_inval_inode_fn notify_inval_inode = NULL;
typedef int (*chan_fd_fn) (struct fuse_chan *);
static chan_fd_fn chan_fd = NULL;
static reply_attr_fn real_reply_attr = NULL;
static reply_entry_fn real_reply_entry = NULL;
static reply_create_fn real_reply_create = NULL;
static reply_write_fn real_reply_write = NULL;

static void resolve_replies (void) {
  if (!real_reply_attr) real_reply_attr = (reply_attr_fn) libfuse_symbol("fuse_reply_attr", "FUSE_2.4");
  if (!real_reply_entry) real_reply_entry = (reply_entry_fn) libfuse_symbol("fuse_reply_entry", "FUSE_2.4");
  if (!real_reply_create) real_reply_create = (reply_create_fn) libfuse_symbol("fuse_reply_create", "FUSE_2.5");
  if (!real_reply_write) real_reply_write = (reply_write_fn) libfuse_symbol("fuse_reply_write", "FUSE_2.4");
  if (!real_process_buf) real_process_buf = (process_buf_fn) libfuse_symbol("fuse_session_process_buf", "FUSE_2.9");
  if (!notify_inval_inode) notify_inval_inode = (notify_inval_inode_fn) libfuse_symbol("fuse_lowlevel_notify_inval_inode", "FUSE_2.8");
  if (!chan_fd) chan_fd = (chan_fd_fn) libfuse_symbol("fuse_chan_fd", "FUSE_2.4");
}

// A request's header and a reply's, from the kernel's FUSE ABI.
struct kernel_in_header { uint32_t len; uint32_t opcode; uint64_t unique; uint64_t nodeid; uint32_t uid; uint32_t gid; uint32_t pid; uint32_t padding; };
struct kernel_out_header { uint32_t len; int32_t error; uint64_t unique; };

// File data across the names of one file. Each name of a hard-linked file is a kernel inode of its own
// (libfuse 2's path API), with a page cache of its own: data written through one name would leave the
// pages another name had cached as they were, and a descriptor open on that name would go on reading the
// old bytes (random operations checked against a model found it). The kernel inodes of files that have
// more than one (the replies that get no attribute timeout, see cached_attrs, and both sides of a link)
// are noted with the file's inode number, and before a write or a change of size through one of them is
// answered, the kernel is told to drop the cached data and attributes of the others. The kernel may have
// to wait for pages another request holds (a write through another name of the same file waiting for its
// own answer), so the telling runs on a thread of its own and the answer waits for it at most
// SIBLING_WAIT_MS; past that the answer goes and the pages are dropped as soon as the kernel lets go.
// A kernel inode the kernel forgets (FUSE_FORGET, FUSE_BATCH_FORGET) leaves the table.
#define KERNEL_FUSE_FORGET 2
#define KERNEL_FUSE_SETATTR 4
#define KERNEL_FUSE_WRITE 16
#define KERNEL_FUSE_BATCH_FORGET 42
#define KERNEL_FATTR_SIZE (1u << 3)
#define NODE_BUCKETS 4096
#define SIBLING_WAIT_MS 100
struct kernel_batch_forget_in { uint32_t count; uint32_t dummy; };
struct kernel_forget_one { uint64_t nodeid; uint64_t nlookup; };
// lookups: the entry replies that named the node since it was noted, which the kernel's FORGET gives back.
struct node_ino { uint64_t node; uint64_t ino; uint64_t lookups; struct node_ino *next_by_node; struct node_ino *next_by_ino; };
static struct node_ino *by_node[NODE_BUCKETS];
static struct node_ino *by_ino[NODE_BUCKETS];
static pthread_mutex_t nodes_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread uint64_t serving_node = 0;
static __thread struct fuse_chan *serving_chan = NULL;
static __thread int serving_size_change = 0;
static volatile uint64_t siblings_dropped = 0;

static size_t bucket_of (uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return (size_t) (x % NODE_BUCKETS);
}

static struct node_ino **find_by_node (uint64_t node) {
  struct node_ino **p = &by_node[bucket_of(node)];
  while (*p && (*p)->node != node) p = &(*p)->next_by_node;
  return p;
}

static void unlink_by_ino (struct node_ino *e) {
  struct node_ino **p = &by_ino[bucket_of(e->ino)];
  while (*p && *p != e) p = &(*p)->next_by_ino;
  if (*p) *p = e->next_by_ino;
}

// entry: the note comes from an entry reply (a lookup the kernel will give back with FORGET).
static void note_node (uint64_t node, uint64_t ino, int entry) {
  if (node == 0 || ino == 0) return;
  pthread_mutex_lock(&nodes_lock);
  struct node_ino *e = *find_by_node(node);
  if (e == NULL) {
    e = malloc(sizeof(*e));
    if (e != NULL) {
      e->node = node;
      e->next_by_node = by_node[bucket_of(node)];
      by_node[bucket_of(node)] = e;
      e->ino = 0;
      e->lookups = 0;
    }
  }
  if (e != NULL && entry) e->lookups++;
  if (e != NULL && e->ino != ino) {
    if (e->ino != 0) unlink_by_ino(e);
    e->ino = ino;
    e->next_by_ino = by_ino[bucket_of(ino)];
    by_ino[bucket_of(ino)] = e;
  }
  pthread_mutex_unlock(&nodes_lock);
}

// A reply that did not reach the kernel (the request was interrupted) gave it no lookup to forget.
static void unnote_lookup (uint64_t node) {
  pthread_mutex_lock(&nodes_lock);
  struct node_ino *e = *find_by_node(node);
  if (e != NULL && e->lookups > 0) e->lookups--;
  pthread_mutex_unlock(&nodes_lock);
}

// A FORGET the kernel sent before a later lookup named the node again (libfuse keeps the node then) takes
// back fewer lookups than were counted, and the node stays. Lookups from before it was noted are not
// counted, so such a FORGET may remove a node the kernel still has: its next reply notes it again.
static void forget_node (uint64_t node, uint64_t nlookup) {
  pthread_mutex_lock(&nodes_lock);
  struct node_ino **p = find_by_node(node);
  struct node_ino *e = *p;
  if (e != NULL && e->lookups > nlookup) {
    e->lookups -= nlookup;
    e = NULL;
  } else if (e != NULL) {
    *p = e->next_by_node;
    unlink_by_ino(e);
  }
  pthread_mutex_unlock(&nodes_lock);
  free(e);
}

static void forget_nodes (const struct kernel_in_header *in, size_t size) {
  if (in->opcode == KERNEL_FUSE_FORGET && size >= sizeof(*in) + sizeof(uint64_t)) {
    forget_node(in->nodeid, *(const uint64_t *) (in + 1));
  } else if (in->opcode == KERNEL_FUSE_BATCH_FORGET && size >= sizeof(*in) + sizeof(struct kernel_batch_forget_in)) {
    const struct kernel_batch_forget_in *arg = (const struct kernel_batch_forget_in *) (in + 1);
    const struct kernel_forget_one *one = (const struct kernel_forget_one *) (arg + 1);
    size_t room = (size - sizeof(*in) - sizeof(*arg)) / sizeof(*one);
    for (size_t i = 0; i < arg->count && i < room; i++) forget_node(one[i].nodeid, one[i].nlookup);
  }
}

// The job writes the kernel's notification itself, on a descriptor of its own (a dup of the channel's):
// a job the kernel held up may end after the daemon unmounted and libfuse freed the channel, and its
// writes then fail on the closed connection instead of reading freed memory.
#define KERNEL_NOTIFY_INVAL_INODE 2
struct kernel_notify_inval_inode_out { uint64_t ino; int64_t off; int64_t len; };
struct sibling_job {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int done;
  int refs;
  int fd;
  size_t count;
  uint64_t nodes[];
};

static void notify_dropped (int fd, uint64_t node) {
  struct kernel_out_header head = { sizeof(head) + sizeof(struct kernel_notify_inval_inode_out), KERNEL_NOTIFY_INVAL_INODE, 0 };
  struct kernel_notify_inval_inode_out arg = { node, 0, 0 };
  struct iovec iov[2] = { { &head, sizeof(head) }, { &arg, sizeof(arg) } };
  // A node the kernel has already forgotten answers ENOENT: nothing was cached.
  (void) !writev(fd, iov, 2);
}

static void job_put (struct sibling_job *job) {
  pthread_mutex_lock(&job->lock);
  int left = --job->refs;
  pthread_mutex_unlock(&job->lock);
  if (left > 0) return;
  pthread_cond_destroy(&job->cond);
  pthread_mutex_destroy(&job->lock);
  if (job->fd >= 0) close(job->fd);
  free(job);
}

static void *drop_siblings_run (void *arg) {
  struct sibling_job *job = arg;
  for (size_t i = 0; i < job->count; i++) notify_dropped(job->fd, job->nodes[i]);
  __sync_fetch_and_add(&siblings_dropped, job->count);
  pthread_mutex_lock(&job->lock);
  job->done = 1;
  pthread_cond_signal(&job->cond);
  pthread_mutex_unlock(&job->lock);
  job_put(job);
  return NULL;
}

// Whether the kernel inode the thread's request is about is one of a file that has more than one.
static int serving_node_shared (void) {
  pthread_mutex_lock(&nodes_lock);
  int shared = serving_node != 0 && *find_by_node(serving_node) != NULL;
  pthread_mutex_unlock(&nodes_lock);
  return shared;
}

// Drops what the kernel caches for the other kernel inodes of the file the thread's request is about.
static void drop_siblings (void) {
  if (serving_node == 0 || serving_chan == NULL || chan_fd == NULL) return;
  pthread_mutex_lock(&nodes_lock);
  struct node_ino *self = *find_by_node(serving_node);
  size_t count = 0;
  if (self != NULL) {
    for (struct node_ino *e = by_ino[bucket_of(self->ino)]; e; e = e->next_by_ino) {
      if (e->ino == self->ino && e != self) count++;
    }
  }
  struct sibling_job *job = count ? malloc(sizeof(*job) + count * sizeof(uint64_t)) : NULL;
  if (job != NULL) {
    size_t i = 0;
    for (struct node_ino *e = by_ino[bucket_of(self->ino)]; e && i < count; e = e->next_by_ino) {
      if (e->ino == self->ino && e != self) job->nodes[i++] = e->node;
    }
    job->count = i;
  }
  pthread_mutex_unlock(&nodes_lock);
  if (job == NULL) return;
  job->fd = fcntl(chan_fd(serving_chan), F_DUPFD_CLOEXEC, 0);
  if (job->fd < 0) {
    free(job);
    return;
  }
  pthread_condattr_t cattr;
  pthread_condattr_init(&cattr);
  pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
  pthread_mutex_init(&job->lock, NULL);
  pthread_cond_init(&job->cond, &cattr);
  pthread_condattr_destroy(&cattr);
  job->done = 0;
  job->refs = 2;
  pthread_attr_t attr;
  pthread_t thread;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int started = pthread_create(&thread, &attr, drop_siblings_run, job) == 0;
  pthread_attr_destroy(&attr);
  if (!started) {
    // Without a thread of its own the kernel's wait could be this request's: the pages stay.
    job->refs = 1;
    job_put(job);
    return;
  }
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_nsec += (long) SIBLING_WAIT_MS * 1000000L;
  until.tv_sec += until.tv_nsec / 1000000000L;
  until.tv_nsec %= 1000000000L;
  pthread_mutex_lock(&job->lock);
  while (!job->done) {
    if (pthread_cond_timedwait(&job->cond, &job->lock, &until) != 0) break;
  }
  pthread_mutex_unlock(&job->lock);
  job_put(job);
}

__attribute__((visibility("default")))
int fuse_reply_write (fuse_req_t req, size_t count) {
  if (!real_reply_write) resolve_replies();
  reply_write_fn real = real_reply_write;
  if (serving == KERNEL_FUSE_WRITE) drop_siblings();
  return real(req, count);
}

// A link made from a name the kernel holds attributes for. Linux (6.x) only updates that name's cached
// ctime on FUSE_LINK, and the new name gets a kernel inode of its own, so the source name would show its
// old link count until its attributes expired. libfuse's loop hands every request to
// fuse_session_process_buf through its PLT: this one notes, for the thread, the source node of a
// FUSE_LINK, and the reply to it (fuse_reply_entry, on the same thread, before the kernel hears of the
// link) first tells the kernel to drop that node's attributes. Layouts from the kernel's FUSE ABI.
#define KERNEL_FUSE_LINK 13
#define KERNEL_FUSE_INIT 26
struct kernel_link_in { uint64_t oldnodeid; };
static __thread uint64_t link_source = 0;

// Large writes. libfuse 2 speaks FUSE protocol 7.19, from before the kernel could take requests of more
// than 32 pages, so a sequential write reaches the filesystem 128 KiB at a time: one trip through the FUSE
// thread and the daemon's main thread for every 128 KiB. Since 7.28 (Linux 4.20) the kernel offers
// FUSE_MAX_PAGES in its INIT request: a daemon that answers with the flag and a max_pages takes writes
// (and reads) of up to that many pages. The flag and field come after the part of the INIT reply libfuse 2
// knows, so this addon adds them: fuse_chan_new gives the channel a receive buffer with room for
// BIG_REQUEST_BYTES of data (libfuse sizes every thread's buffer from it, and its max_write follows from
// it), fuse_session_process_buf notes an INIT request whose kernel offers the flag, and fuse_chan_send,
// which carries libfuse's reply to it on the same thread, sends the longer reply with the flag set. The
// kernel keeps the lower of max_pages and its own limit (256 pages by default). Nothing else of the
// protocol changes: the reply still names 7.19.
#define BIG_REQUEST_BYTES (1024 * 1024)
#define KERNEL_FUSE_MAX_PAGES (1u << 22)
struct kernel_init_in { uint32_t major; uint32_t minor; uint32_t max_readahead; uint32_t flags; };
// The INIT reply as of 7.28; libfuse 2 sends the first 24 bytes (up to max_write).
struct kernel_init_out {
  uint32_t major; uint32_t minor; uint32_t max_readahead; uint32_t flags;
  uint16_t max_background; uint16_t congestion_threshold; uint32_t max_write;
  uint32_t time_gran; uint16_t max_pages; uint16_t map_alignment; uint32_t flags2; uint32_t unused[7];
};
#define LIBFUSE_INIT_OUT_BYTES 24
static __thread uint64_t big_init_unique = 0;
// The largest request libfuse's buffers were made for, 0 until fuse_chan_new came here.
static size_t big_request_bytes = 0;
// What the INIT reply offered the kernel (max_pages in bytes), 0 until it was sent.
static size_t offered_request_bytes = 0;

typedef struct fuse_chan *(*chan_new_fn) (struct fuse_chan_ops *, int, size_t, void *);
typedef int (*chan_send_fn) (struct fuse_chan *, const struct iovec *, size_t);
static chan_send_fn real_chan_send = NULL;

__attribute__((visibility("default")))
struct fuse_chan *fuse_chan_new (struct fuse_chan_ops *op, int fd, size_t bufsize, void *data) {
  chan_new_fn real = (chan_new_fn) libfuse_symbol("fuse_chan_new", "FUSE_2.6");
  if (!real) abort();
  if (!real_chan_send) real_chan_send = (chan_send_fn) libfuse_symbol("fuse_chan_send", "FUSE_2.4");
  // libfuse keeps 4 KiB of the buffer for the request's header (FUSE_BUFFER_HEADER_SIZE in later libfuse).
  size_t wanted = BIG_REQUEST_BYTES + 4096;
  if (interposed && real_chan_send && bufsize < wanted) {
    struct fuse_chan *ch = real(op, fd, wanted, data);
    if (ch) big_request_bytes = BIG_REQUEST_BYTES;
    return ch;
  }
  return real(op, fd, bufsize, data);
}

static void note_init (const struct kernel_in_header *in, size_t size) {
  if (big_request_bytes == 0 || size < sizeof(*in) + sizeof(struct kernel_init_in)) return;
  const struct kernel_init_in *arg = (const struct kernel_init_in *) (in + 1);
  if (arg->major == 7 && (arg->flags & KERNEL_FUSE_MAX_PAGES)) big_init_unique = in->unique;
}

__attribute__((visibility("default")))
int fuse_chan_send (struct fuse_chan *ch, const struct iovec iov[], size_t count) {
  if (!real_chan_send) real_chan_send = (chan_send_fn) libfuse_symbol("fuse_chan_send", "FUSE_2.4");
  chan_send_fn real = real_chan_send;
  if (!real) abort();
  if (big_init_unique == 0 || count != 2 || iov[0].iov_len != sizeof(struct kernel_out_header) ||
      iov[1].iov_len != LIBFUSE_INIT_OUT_BYTES) return real(ch, iov, count);
  const struct kernel_out_header *head = (const struct kernel_out_header *) iov[0].iov_base;
  if (head->unique != big_init_unique || head->error != 0) return real(ch, iov, count);
  big_init_unique = 0;
  struct kernel_init_out out;
  memset(&out, 0, sizeof(out));
  memcpy(&out, iov[1].iov_base, LIBFUSE_INIT_OUT_BYTES);
  size_t page = (size_t) getpagesize();
  size_t bytes = out.max_write < big_request_bytes ? out.max_write : big_request_bytes;
  if (bytes <= 32 * page) return real(ch, iov, count);
  out.flags |= KERNEL_FUSE_MAX_PAGES;
  out.max_pages = (uint16_t) (bytes / page);
  struct kernel_out_header longer = *head;
  longer.len = sizeof(longer) + sizeof(out);
  struct iovec sent[2] = { { &longer, sizeof(longer) }, { &out, sizeof(out) } };
  int r = real(ch, sent, 2);
  if (r == 0) offered_request_bytes = (size_t) out.max_pages * page;
  return r;
}

__attribute__((visibility("default")))
void fuse_session_process_buf (struct fuse_session *se, const struct fuse_buf *buf, struct fuse_chan *ch) {
  if (!real_process_buf) resolve_replies();
  process_buf_fn real = real_process_buf;
  if (!real) abort();
  // The request's header, when the request is in memory (libfuse 2 reads into memory unless told to splice).
  const struct kernel_in_header *in = buf != NULL && !(buf->flags & FUSE_BUF_IS_FD) && buf->mem != NULL &&
    buf->size >= sizeof(struct kernel_in_header) ? (const struct kernel_in_header *) buf->mem : NULL;
  if (in != NULL && in->opcode == KERNEL_FUSE_LINK && took_over &&
      buf->size >= sizeof(*in) + sizeof(struct kernel_link_in)) {
    const struct kernel_link_in *arg = (const struct kernel_link_in *) (in + 1);
    link_source = arg->oldnodeid;
  } else if (in != NULL && in->opcode == KERNEL_FUSE_INIT) {
    note_init(in, buf->size);
  }
  serving = in != NULL ? in->opcode : 0;
  serving_node = in != NULL ? in->nodeid : 0;
  serving_chan = ch;
  serving_size_change = in != NULL && in->opcode == KERNEL_FUSE_SETATTR &&
    buf->size >= sizeof(*in) + sizeof(uint32_t) && (*(const uint32_t *) (in + 1) & KERNEL_FATTR_SIZE) != 0;
  if (in != NULL) forget_nodes(in, buf->size);
  real(se, buf, ch);
  serving = 0;
  serving_node = 0;
  serving_chan = NULL;
  forget_hidden();
  link_source = 0;
  created_here.used = 0;
}

static void drop_link_source (void) {
  if (link_source != 0 && serving_chan != NULL && notify_inval_inode != NULL) notify_inval_inode(serving_chan, link_source, -1, 0);
  link_source = 0;
}

// The filesystem's mark (SHARED_NODES_DEV in src/fs/filesystem.ts) on a file with a hidden name beside its
// visible one: two kernel inodes, though the link count says one name. libfuse does not pass st_dev on.
#define SHARED_NODES_DEV 1

static int cached_attrs (const struct stat *st) {
  return !interposed || S_ISDIR(st->st_mode) || (st->st_nlink <= 1 && !(st->st_dev & SHARED_NODES_DEV));
}

__attribute__((visibility("default")))
int fuse_reply_attr (fuse_req_t req, const struct stat *attr, double attr_timeout) {
  if (!real_reply_attr) resolve_replies();
  reply_attr_fn real = real_reply_attr;
  if (attr != NULL && !cached_attrs(attr)) note_node(serving_node, attr->st_ino, 0);
  if (serving == KERNEL_FUSE_SETATTR && serving_size_change) drop_siblings();
  return real(req, attr, attr != NULL && !cached_attrs(attr) ? 0 : attr_timeout);
}

// The entry to send: e itself, or, for attributes the kernel must not keep, a copy in copy with no
// attribute timeout (a negative entry, ino 0, carries no attributes).
static const struct fuse_entry_param *entry_to_send (const struct fuse_entry_param *e, struct fuse_entry_param *copy) {
  if (e == NULL || e->ino == 0 || cached_attrs(&e->attr)) return e;
  *copy = *e;
  copy->attr_timeout = 0;
  return copy;
}

__attribute__((visibility("default")))
int fuse_reply_entry (fuse_req_t req, const struct fuse_entry_param *e) {
  if (!real_reply_entry) resolve_replies();
  reply_entry_fn real = real_reply_entry;
  int noted = e != NULL && e->ino != 0 && !cached_attrs(&e->attr);
  if (noted) {
    note_node(e->ino, e->attr.st_ino, 1);
    if (link_source != 0) note_node(link_source, e->attr.st_ino, 0);
  }
  drop_link_source();
  struct fuse_entry_param copy;
  int r = real(req, entry_to_send(e, &copy));
  if (noted && r != 0) unnote_lookup(e->ino);
  return r;
}

__attribute__((visibility("default")))
int fuse_reply_create (fuse_req_t req, const struct fuse_entry_param *e, const struct fuse_file_info *fi) {
  if (!real_reply_create) resolve_replies();
  reply_create_fn real = real_reply_create;
  int noted = e != NULL && e->ino != 0 && !cached_attrs(&e->attr);
  if (noted) note_node(e->ino, e->attr.st_ino, 1);
  struct fuse_entry_param copy;
  int r = real(req, entry_to_send(e, &copy), fi);
  if (noted && r != 0) unnote_lookup(e->ino);
  return r;
}

// Puts this addon in the global symbol scope, ahead of any libfuse loaded after it, so that fuse-native's
// call to fuse_new comes here. Call before fuse-native is loaded. Returns whether it worked.
static napi_value interpose (napi_env env, napi_callback_info info) {
  (void) info;
  Dl_info self;
  int ok = dladdr((void *) &interpose, &self) != 0 && self.dli_fname != NULL &&
    dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL) != NULL;
  if (ok) interposed = 1;
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

// Whether a call from libfuse or fuse-native to fuse_new and to the reply functions would come here now:
// asked once libfuse is loaded, before mounting.
static napi_value in_force (napi_env env, napi_callback_info info) {
  (void) info;
  // dlsym, not dlvsym: dlvsym asks for a hidden version match and passes over these unversioned
  // definitions, which a versioned reference (fuse-native's, libfuse's PLT) does take.
  int ok = interposed &&
    dlsym(RTLD_DEFAULT, "fuse_new") == (void *) &fuse_new &&
    dlsym(RTLD_DEFAULT, "fuse_reply_attr") == (void *) &fuse_reply_attr &&
    dlsym(RTLD_DEFAULT, "fuse_reply_entry") == (void *) &fuse_reply_entry &&
    dlsym(RTLD_DEFAULT, "fuse_reply_create") == (void *) &fuse_reply_create &&
    dlsym(RTLD_DEFAULT, "fuse_reply_write") == (void *) &fuse_reply_write &&
    dlsym(RTLD_DEFAULT, "fuse_session_process_buf") == (void *) &fuse_session_process_buf;
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

// Whether fuse-native's fuse_new went through this addon (known once a mount was made).
static napi_value took_over_js (napi_env env, napi_callback_info info) {
  (void) info;
  napi_value result;
  napi_get_boolean(env, took_over, &result);
  return result;
}

// The largest read or write request the INIT reply offered the kernel, 0 when it did not offer more than
// libfuse 2 does (32 pages).
static napi_value request_bytes_js (napi_env env, napi_callback_info info) {
  (void) info;
  napi_value result;
  napi_create_double(env, (double) offered_request_bytes, &result);
  return result;
}

// Sets *flag from the one boolean argument of a call from JavaScript; usage is the error for anything else.
static napi_value set_flag (napi_env env, napi_callback_info info, volatile int *flag, const char *usage) {
  size_t argc = 1;
  napi_value argv[1];
  bool on = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_get_value_bool(env, argv[0], &on) != napi_ok) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  *flag = on ? 1 : 0;
  __sync_synchronize();
  return NULL;
}

// setNoCapabilities(true): no file has a security.capability attribute, so getxattr_quick may answer for
// it; false: one may (called before one is stored).
static napi_value set_no_capabilities (napi_env env, napi_callback_info info) {
  return set_flag(env, info, &no_capabilities, "setNoCapabilities(absent) needs a boolean");
}

// noteCreated(fh, ints): the attributes of the file just created with handle fh, for libfuse's fgetattr
// after the create (see fgetattr_quick). ints is a Uint32Array in fuse-native's layout for getattr
// answers: mode, uid, gid, size (low, high), dev, nlink, ino, rdev, blksize, blocks (low, high), and
// atime, mtime, ctime in milliseconds (low, high each).
#define STAT_INTS 18
static napi_value note_created_js (napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  double fh = 0;
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_double(env, argv[0], &fh) != napi_ok ||
      napi_get_typedarray_info(env, argv[1], &type, &length, &data, NULL, NULL) != napi_ok ||
      type != napi_uint32_array || length < STAT_INTS || !(fh >= 0)) {
    napi_throw_type_error(env, NULL, "noteCreated(fh, ints) needs a handle and a Uint32Array of 18");
    return NULL;
  }
  const uint32_t *v = (const uint32_t *) data;
  #define U64(i) ((uint64_t) v[i] + ((uint64_t) v[(i) + 1] << 32))
  struct stat st;
  memset(&st, 0, sizeof(st));
  st.st_mode = v[0];
  st.st_uid = v[1];
  st.st_gid = v[2];
  st.st_size = (off_t) U64(3);
  st.st_dev = v[5];
  st.st_nlink = v[6];
  st.st_ino = v[7];
  st.st_rdev = v[8];
  st.st_blksize = v[9];
  st.st_blocks = (blkcnt_t) U64(10);
  uint64_t ms[3] = { U64(12), U64(14), U64(16) };
  struct timespec *ts[3] = { &st.st_atim, &st.st_mtim, &st.st_ctim };
  for (int i = 0; i < 3; i++) {
    ts[i]->tv_sec = (time_t) (ms[i] / 1000);
    ts[i]->tv_nsec = (long) (ms[i] % 1000) * 1000000;
  }
  #undef U64
  if (took_over && inner_fgetattr) note_created((uint64_t) fh, &st);
  return NULL;
}

// deferReleases(on): whether releases are answered here and listed for takeReleased (see release_noted).
static napi_value defer_releases_js (napi_env env, napi_callback_info info) {
  return set_flag(env, info, &defer_releases, "deferReleases(on) needs a boolean");
}

// takeReleased(): the handles released since the last call, in the order the kernel released them, or
// null when there are none (the common case, answered without taking the lock). The list is swapped out
// under the lock and turned into an array after it, so releasing threads never wait for JavaScript.
static napi_value take_released_js (napi_env env, napi_callback_info info) {
  (void) info;
  napi_value result;
  if (__atomic_load_n(&released_len, __ATOMIC_ACQUIRE) == 0) {
    napi_get_null(env, &result);
    return result;
  }
  pthread_mutex_lock(&released_lock);
  uint64_t *taken = released;
  size_t n = released_len;
  released = NULL;
  released_cap = 0;
  __atomic_store_n(&released_len, 0, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&released_lock);
  napi_status ok = napi_create_array_with_length(env, n, &result);
  for (size_t i = 0; ok == napi_ok && i < n; i++) {
    napi_value fh;
    ok = napi_create_double(env, (double) taken[i], &fh);
    if (ok == napi_ok) ok = napi_set_element(env, result, (uint32_t) i, fh);
  }
  free(taken);
  if (ok != napi_ok) {
    napi_throw_error(env, NULL, "takeReleased: could not build the list of released handles");
    return NULL;
  }
  return result;
}

// How many requests were answered here rather than by the daemon, since the mount: the capability
// query, read-only flushes, the attributes after a create, releases.
static napi_value answered_js (napi_env env, napi_callback_info info) {
  (void) info;
  napi_value result, n;
  napi_create_object(env, &result);
  napi_create_double(env, (double) capability_answered, &n);
  napi_set_named_property(env, result, "capability", n);
  napi_create_double(env, (double) flush_answered, &n);
  napi_set_named_property(env, result, "readOnlyFlush", n);
  napi_create_double(env, (double) created_answered, &n);
  napi_set_named_property(env, result, "createAttrs", n);
  napi_create_double(env, (double) release_answered, &n);
  napi_set_named_property(env, result, "release", n);
  return result;
}

// How many times the cached data of a kernel inode was dropped because the file changed through another
// of its names (drop_siblings).
static napi_value siblings_dropped_js (napi_env env, napi_callback_info info) {
  (void) info;
  napi_value result;
  napi_create_double(env, (double) siblings_dropped, &result);
  return result;
}

// trimMalloc(): gives the pages of freed memory in malloc's heaps back to the system (malloc_trim). The
// daemon's 128-256 KiB chunk and block buffers come from those heaps once glibc has raised its mmap
// threshold past them (it does after the first such buffer is freed), and pages freed there stay resident
// until trimmed. Returns whether any memory was given back.
static napi_value trim_malloc (napi_env env, napi_callback_info info) {
  (void) info;
  napi_value result;
#ifdef __GLIBC__
  napi_get_boolean(env, malloc_trim(0) == 1, &result);
#else
  napi_get_boolean(env, false, &result);
#endif
  return result;
}

// The kernel's FUSE protocol answered on the main thread (src/fuse/kernel.ts). kernelMount(mountpoint,
// options) mounts through libfuse's fuse_mount, which runs fusermount when not root, and gives back the
// /dev/fuse descriptor, non-blocking and closed on exec. watchFuse(fd, onReadable) calls onReadable on the
// main thread whenever the descriptor has a request waiting (or has gone: the read then says ENODEV);
// unwatchFuse() stops that. fuseRead(fd, buf) and fuseWrite(fd, buf, len) are read(2) and write(2)
// returning -errno instead of throwing, because an empty queue (EAGAIN) ends every burst of requests and a
// reply to an interrupted request (ENOENT) is ordinary. One watched descriptor per process.
typedef struct fuse_chan *(*mount_fn) (const char *, struct fuse_args *);
static uv_poll_t fuse_poll;
static int fuse_polling = 0;
static napi_env poll_env = NULL;
static napi_ref poll_callback = NULL;

static napi_value kernel_mount_js (napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  char mountpoint[4096], options[4096];
  size_t n = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_string_utf8(env, argv[0], mountpoint, sizeof(mountpoint), &n) != napi_ok || n >= sizeof(mountpoint) - 1 ||
      napi_get_value_string_utf8(env, argv[1], options, sizeof(options), &n) != napi_ok || n >= sizeof(options) - 1) {
    napi_throw_type_error(env, NULL, "kernelMount(mountpoint, options) needs two strings");
    return NULL;
  }
  mount_fn mount = (mount_fn) libfuse_symbol("fuse_mount", "FUSE_2.6");
  chan_fd_fn fd_of = (chan_fd_fn) libfuse_symbol("fuse_chan_fd", "FUSE_2.4");
  if (!mount || !fd_of) {
    napi_throw_error(env, "ENOFUSE", "libfuse.so.2 is not loaded");
    return NULL;
  }
  char *args_argv[] = { "coopfs", "-o", options, NULL };
  struct fuse_args args = FUSE_ARGS_INIT(options[0] != '\0' ? 3 : 1, args_argv);
  struct fuse_chan *ch = mount(mountpoint, &args);
  int fd = ch ? fd_of(ch) : -1;
  if (fd < 0) {
    napi_throw_error(env, "EMOUNT", "the kernel did not mount it (fusermount said why above)");
    return NULL;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
  napi_value result;
  napi_create_int32(env, fd, &result);
  return result;
}

// The callback may unwatch (the connection went), which clears poll_env: the scope is closed with the
// env it was opened with.
static void fuse_readable (uv_poll_t *handle, int status, int events) {
  (void) handle; (void) status; (void) events;
  napi_env env = poll_env;
  napi_handle_scope scope;
  napi_value callback, global;
  if (env == NULL || poll_callback == NULL || napi_open_handle_scope(env, &scope) != napi_ok) return;
  if (napi_get_reference_value(env, poll_callback, &callback) == napi_ok && callback != NULL &&
      napi_get_global(env, &global) == napi_ok) {
    napi_make_callback(env, NULL, global, callback, 0, NULL, NULL);
  }
  napi_close_handle_scope(env, scope);
}

static napi_value watch_fuse_js (napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd = -1;
  napi_valuetype type = napi_undefined;
  uv_loop_t *loop = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, NULL, "watchFuse(fd, onReadable) needs a descriptor and a function");
    return NULL;
  }
  // fuse_polling stays set until the handle of an earlier watch has closed (uv_close completes later).
  if (fuse_polling) {
    napi_throw_error(env, "EBUSY", "watchFuse: a descriptor is watched already");
    return NULL;
  }
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || uv_poll_init(loop, &fuse_poll, fd) != 0) {
    napi_throw_error(env, NULL, "watchFuse: cannot watch the descriptor");
    return NULL;
  }
  if (uv_poll_start(&fuse_poll, UV_READABLE, fuse_readable) != 0) {
    uv_close((uv_handle_t *) &fuse_poll, NULL);
    napi_throw_error(env, NULL, "watchFuse: cannot watch the descriptor");
    return NULL;
  }
  poll_env = env;
  napi_create_reference(env, argv[1], 1, &poll_callback);
  fuse_polling = 1;
  return NULL;
}

static int fuse_poll_closing = 0;

static void fuse_poll_closed (uv_handle_t *handle) {
  (void) handle;
  fuse_poll_closing = 0;
  fuse_polling = 0;
}

static napi_value unwatch_fuse_js (napi_env env, napi_callback_info info) {
  (void) info;
  if (!fuse_polling || fuse_poll_closing) return NULL;
  uv_poll_stop(&fuse_poll);
  fuse_poll_closing = 1;
  uv_close((uv_handle_t *) &fuse_poll, fuse_poll_closed);
  if (poll_callback) napi_delete_reference(env, poll_callback);
  poll_callback = NULL;
  poll_env = NULL;
  return NULL;
}

// The (fd, buffer[, length]) arguments of fuseRead and fuseWrite.
static int fd_and_buffer (napi_env env, napi_callback_info info, int32_t *fd, void **data, size_t *len, const char *usage) {
  size_t argc = 3;
  napi_value argv[3];
  uint32_t want = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2 ||
      napi_get_value_int32(env, argv[0], fd) != napi_ok ||
      napi_get_buffer_info(env, argv[1], data, len) != napi_ok ||
      (argc >= 3 && (napi_get_value_uint32(env, argv[2], &want) != napi_ok || want > *len))) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  if (argc >= 3) *len = want;
  return 1;
}

// read(2) or write(2) of the (fd, buffer[, length]) arguments, -errno on failure.
static napi_value fd_io (napi_env env, napi_callback_info info, int writing, const char *usage) {
  int32_t fd;
  void *data;
  size_t len;
  if (!fd_and_buffer(env, info, &fd, &data, &len, usage)) return NULL;
  ssize_t n;
  do n = writing ? write(fd, data, len) : read(fd, data, len); while (n < 0 && errno == EINTR);
  napi_value result;
  napi_create_int32(env, n < 0 ? -errno : (int32_t) n, &result);
  return result;
}

static napi_value fuse_read_js (napi_env env, napi_callback_info info) {
  return fd_io(env, info, 0, "fuseRead(fd, buffer) needs a descriptor and a Buffer");
}

static napi_value fuse_write_js (napi_env env, napi_callback_info info) {
  return fd_io(env, info, 1, "fuseWrite(fd, buffer, length) needs a descriptor, a Buffer and a length");
}

// pageSize(): the system's page size, in which the kernel counts max_pages.
static napi_value page_size_js (napi_env env, napi_callback_info info) {
  (void) info;
  napi_value result;
  long size = sysconf(_SC_PAGESIZE);
  napi_create_double(env, size > 0 ? (double) size : 4096.0, &result);
  return result;
}

static napi_value init (napi_env env, napi_value exports) {
  static const struct { const char *name; napi_callback fn; } functions[] = {
    { "trimMalloc", trim_malloc },
    { "kernelMount", kernel_mount_js },
    { "watchFuse", watch_fuse_js },
    { "unwatchFuse", unwatch_fuse_js },
    { "fuseRead", fuse_read_js },
    { "fuseWrite", fuse_write_js },
    { "pageSize", page_size_js },
    { "noteCreated", note_created_js },
    { "answered", answered_js },
    { "siblingsDropped", siblings_dropped_js },
    { "deferReleases", defer_releases_js },
    { "takeReleased", take_released_js },
    { "setNoCapabilities", set_no_capabilities },
    { "requestBytes", request_bytes_js },
    { "inForce", in_force },
    { "tookOver", took_over_js },
    { "loadGlobal", load_global },
    { "interpose", interpose }
  };
  for (size_t i = 0; i < sizeof(functions) / sizeof(functions[0]); i++) {
    napi_value fn;
    napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, functions[i].name, fn);
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
