// Loads a shared library with RTLD_GLOBAL and keeps it loaded, so that an addon loaded later (fuse-native)
// resolves its libfuse.so.2 dependency to it. process.dlopen cannot do this: it unloads any library that
// does not register a Node module.
#include <dlfcn.h>
#include <node_api.h>
#include <stdlib.h>

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

static napi_value init (napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "loadGlobal", NAPI_AUTO_LENGTH, load_global, NULL, &fn);
  napi_set_named_property(env, exports, "loadGlobal", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
