"""Solana settlement: the only package of rigpool that imports solders or solana-py.

`LiteSVMChain` is the embedded default (a real Solana runtime in-process); `RpcChain` talks to
a cluster through an RPC URL. Both satisfy `rigpool.ledger.chain.Chain`.
"""

from rigpool.ledger.solana.litesvm_chain import LiteSVMChain, new_keypair_bytes
from rigpool.ledger.solana.rpc_chain import RpcChain

__all__ = ["LiteSVMChain", "RpcChain", "new_keypair_bytes"]
