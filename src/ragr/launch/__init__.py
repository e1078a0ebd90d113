"""Launchers: how the composed config becomes running processes.

``launcher=local`` trains in this process (:mod:`ragr.launch.local`); ``ddp``, ``deepspeed-zero{1,2,3}``
and ``fsdp`` write the resolved config and an accelerate config into the run dir and start ranks that
read them (:mod:`ragr.launch.distributed`, :mod:`ragr.launch.worker`); :mod:`ragr.launch.layers` finds
the layer class FSDP wraps. See docs/MULTINODE.md.
"""
