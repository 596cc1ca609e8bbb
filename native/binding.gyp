{
  "targets": [
    {
      "target_name": "coopfs_gf256",
      "sources": ["gf256.c"],
      # Node's common.gypi already builds Release with -O3. The SIMD kernels
      # carry their own target("ssse3"/"avx2") attributes and are chosen at run
      # time, so no -mavx2 here: the addon must still load on CPUs without it.
      "cflags_c": ["-std=gnu11"],
      "xcode_settings": {
        "OTHER_CFLAGS": ["-std=gnu11"]
      }
    },
    {
      "target_name": "coopfs_preload",
      "sources": ["preload.c"],
      # fuse.h (libfuse 2.9) ships with fuse-native's own dependency fuse-shared-library-linux.
      "include_dirs": ["<!(node -p \"require('path').join(require('path').dirname(require.resolve('fuse-shared-library-linux/package.json')), 'libfuse', 'include')\")"],
      "cflags_c": ["-std=gnu11"],
      "libraries": ["-ldl"]
    }
  ]
}
