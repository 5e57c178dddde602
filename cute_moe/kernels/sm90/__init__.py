"""CuTe DSL kernels for Hopper (sm_90a): TMA + mbarrier pipelines + WGMMA."""
