"""Builds the optional C kernels: the router's decision path (the prefix index's,
`scheduler/_index_native.c`, and block hashing of token lists, `_hashing_native.c`, with the
vendored header-only xxHash in third_party/xxhash) and the KV store's block copies
(`kvstore/_copy_native.c`).

Everything else is in pyproject.toml. The extension is optional: where no C compiler is
present the install still succeeds and the index runs its Python kernels (same results,
slower; `preble_tiered.scheduler.index.kernel_names()` says which index kernels are built).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "preble_tiered.scheduler._index_native",
            ["preble_tiered/scheduler/_index_native.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wno-missing-braces"],
            optional=True,
        ),
        Extension(
            "preble_tiered.kvstore._copy_native",
            ["preble_tiered/kvstore/_copy_native.c"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
        Extension(
            "preble_tiered._hashing_native",
            ["preble_tiered/_hashing_native.c"],
            include_dirs=["third_party/xxhash"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        ),
    ],
)
