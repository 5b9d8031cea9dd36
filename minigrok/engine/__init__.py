"""The fast paths: the reference's arithmetic arranged for speed, and proven equal to it by tests.

CPU: threads (the pool, BLAS held back), cpu (numpy tiles), native (the C kernel). GPU: gemv
(the int8 GEMV kernels, TF32 prefill), decode (a token through a layer in few launches),
devices, placement (the memory plan), stream (weights copied from the host). They plug into
the reference through weights (weights with their own ``matmul``) and runtime (the
parameters and layer function for a device). Kernel sources live in kernels/. Only the
application (api, cli, bench, golden) imports this package.
"""
