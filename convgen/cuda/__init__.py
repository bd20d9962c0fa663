"""CUDA machinery: resource checks, nvcc fatbins, TVM's CUDA runtime, CPU emulation.

Kernels for a GPU are built on a machine that usually has none. What can be proven there
is proven before anything runs:

1. **Static checks.** The scheduled TIR is lowered as far as TVM's own ``VerifyGPUCode``
   needs and checked against the target's limits (threads and shared memory per block,
   virtual threads, vector width); after nvcc, the registers ptxas assigned are checked
   against the register file. Templates reject most impossible configs in their knob
   constraint already; this catches what that arithmetic missed. Failures raise
   :class:`~convgen.errors.ConfigError` naming the limit.
2. **Device code ahead of time.** Without a CUDA runtime in the process, ``tvm.compile``
   keeps the kernel as CUDA *source* (TVM's "fallback" CUDA module), which a GPU machine
   would have to compile when loading. convgen compiles that source with nvcc into a
   fatbin (SASS for the target's ``sm_XX`` plus ``compute_XX`` PTX for later GPUs) and,
   when exporting, writes the fatbin in place of the source into the library's embedded
   module blob (:func:`.fatbin.patch_library_bin`). The ``.so`` then loads on a GPU machine with
   nothing but TVM's runtime: no nvcc, no NVRTC there. Where a CUDA runtime *is* loaded
   (a GPU build machine), TVM compiles during ``tvm.compile`` through its
   ``tvm_callback_cuda_compile`` hook; convgen points that hook at the same nvcc call for
   the duration of the compile (:func:`.compile._nvcc_hook`) and restores TVM's own afterwards.
   No stand-in driver library is ever loaded and no environment variable is set.
3. **Numerics without a GPU.** :func:`.emulate.emulate` takes the same scheduled loop nest, turns
   every thread binding (blockIdx, vthread, threadIdx) into a serial loop and shared
   memory into local buffers, builds it for the CPU and returns a callable; tests compare
   it with the numpy reference. Serially, each "thread" performs the whole cooperative
   copy of a tile before using it, so a copy with wrong bounds gives wrong numbers. Races
   and missing barriers are not modelled (TVM inserts the barriers), nor are tensor-core
   intrinsics, which have no CPU implementation (``intrinsics=False`` emulates a
   tensor-core template's loop nest with its 16x16x16 tiles as plain loops).

Modules, by concern (this package's ``__init__`` imports none of them, so the runtime side
can import :mod:`.device` without the compiler side):

- :mod:`.toolchain`: finding nvcc, compiling CUDA source to a fatbin, ptxas's report;
- :mod:`.verify`: the static checks (``VerifyGPUCode``, registers);
- :mod:`.compile`: the builder's CUDA path (the nvcc hook, checks, compile, export packing);
- :mod:`.fatbin`: the byte formats (TVM's library blob, fatbin containers, ELF symbols);
- :mod:`.device`: the runtime side: TVM's CUDA runtime, whether a GPU can run a target;
- :mod:`.emulate`: the CPU emulation of a GPU schedule.

The per-block limits of a CUDA target live beside it: :meth:`convgen.target.Target.gpu_limits`.
"""
