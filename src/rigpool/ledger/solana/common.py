"""Instruction building, transaction packing and decoding shared by both chain implementations.

Token instructions come from `spl.token.instructions` (solana-py). The Memo is v1
(`Memo1Uhk...`): LiteSVM ships it, and with no accounts it is the cheapest way to put an epoch's
Merkle root on chain (Memo v1 does not require signers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import spl.token.instructions as token_ix
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.system_program import CreateAccountParams, create_account
from solders.transaction import Transaction
from spl.token.constants import MINT_LEN, TOKEN_PROGRAM_ID
from spl.token.models import InitializeMint2Params, MintToParams, TransferCheckedParams

from rigpool.ledger.chain import ChainTransaction, PreparedTx, TokenTransfer

MEMO_V1 = Pubkey.from_string("Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo")
MEMO_V2 = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")
PACKET_DATA_SIZE = 1232  # the most bytes a Solana transaction may take on the wire
LAMPORTS_PER_SIGNATURE = 5000

_TRANSFER = 3
_TRANSFER_CHECKED = 12


def keypair(raw: bytes) -> Keypair:
    """A solders Keypair from the 64 bytes that `rigpool.protocol.signing` keys use."""
    return Keypair.from_bytes(raw)


def derived_keypair(raw: bytes, label: bytes) -> Keypair:
    """A keypair derived from another's secret: stable addresses (e.g. the mint) per key."""
    return Keypair.from_seed(hashlib.sha256(raw[:32] + label).digest())


def ata(wallet: Pubkey, mint: Pubkey) -> Pubkey:
    return token_ix.get_associated_token_address(wallet, mint)


def memo_ix(text: str) -> Instruction:
    return Instruction(MEMO_V1, text.encode(), [])


def create_mint_ixs(payer: Pubkey, mint: Pubkey, rent: int, decimals: int) -> list[Instruction]:
    return [
        create_account(
            CreateAccountParams(
                from_pubkey=payer,
                to_pubkey=mint,
                lamports=rent,
                space=MINT_LEN,
                owner=TOKEN_PROGRAM_ID,
            )
        ),
        token_ix.initialize_mint2(
            InitializeMint2Params(
                decimals=decimals,
                program_id=TOKEN_PROGRAM_ID,
                mint=mint,
                mint_authority=payer,
                freeze_authority=None,
            )
        ),
        token_ix.create_idempotent_associated_token_account(payer, payer, mint),
    ]


def mint_to_ix(mint: Pubkey, dest_wallet: Pubkey, authority: Pubkey, amount: int) -> Instruction:
    return token_ix.mint_to(
        MintToParams(
            program_id=TOKEN_PROGRAM_ID,
            mint=mint,
            dest=ata(dest_wallet, mint),
            mint_authority=authority,
            amount=amount,
        )
    )


def transfer_ix(
    mint: Pubkey, source_wallet: Pubkey, dest_wallet: Pubkey, amount: int, decimals: int
) -> Instruction:
    return token_ix.transfer_checked(
        TransferCheckedParams(
            program_id=TOKEN_PROGRAM_ID,
            source=ata(source_wallet, mint),
            mint=mint,
            dest=ata(dest_wallet, mint),
            owner=source_wallet,
            amount=amount,
            decimals=decimals,
        )
    )


def pack_payouts(
    payer: Keypair,
    mint: Pubkey,
    decimals: int,
    payments: Sequence[tuple[str, int]],
    memo: str,
    blockhash: Hash,
    ata_exists: Callable[[Pubkey], bool],
) -> list[PreparedTx]:
    """Greedily pack vault -> wallet transfers into as few transactions as fit in a packet.

    A payee without a token account gets an idempotent ATA creation first (paid by the
    coordinator), which costs more bytes; each transaction ends with the Memo `{memo}:part=K`.
    The caller makes `memo` unique per call (the settler puts the first payout id in it).
    """

    def payment_ixs(wallet: Pubkey, amount: int) -> list[Instruction]:
        ixs = []
        if not ata_exists(wallet):
            ixs.append(
                token_ix.create_idempotent_associated_token_account(payer.pubkey(), wallet, mint)
            )
        ixs.append(transfer_ix(mint, payer.pubkey(), wallet, amount, decimals))
        return ixs

    def memo_k() -> Instruction:
        # The part number makes every transaction of one call distinct: two transactions with
        # equal instructions and blockhash would share a signature and land only once.
        return memo_ix(f"{memo}:part={len(out)}")

    def size(ixs: list[Instruction]) -> int:
        msg = Message.new_with_blockhash([*ixs, memo_k()], payer.pubkey(), blockhash)
        return 1 + 64 + len(bytes(msg))

    def seal(ixs: list[Instruction], group: list[tuple[str, int]]) -> PreparedTx:
        tx = Transaction.new_signed_with_payer([*ixs, memo_k()], payer.pubkey(), [payer], blockhash)
        return PreparedTx(str(tx.signatures[0]), str(blockhash), bytes(tx), tuple(group))

    out: list[PreparedTx] = []
    ixs: list[Instruction] = []
    group: list[tuple[str, int]] = []
    for wallet_str, amount in payments:
        wallet = Pubkey.from_string(wallet_str)
        more = payment_ixs(wallet, amount)
        if group and size([*ixs, *more]) > PACKET_DATA_SIZE:
            out.append(seal(ixs, group))
            ixs, group = [], []
        ixs.extend(more)
        group.append((wallet_str, amount))
    if group:
        out.append(seal(ixs, group))
    return out


def decode(signature: str, msg: Message | MessageV0, ok: bool) -> ChainTransaction:
    """Read the memos and token transfers of a transaction message (static keys only)."""
    keys = msg.account_keys
    signers = tuple(str(k) for k in keys[: msg.header.num_required_signatures])
    memos: list[str] = []
    transfers: list[TokenTransfer] = []
    for ix in msg.instructions:
        program = keys[ix.program_id_index]
        accounts = [keys[i] for i in bytes(ix.accounts)]
        data = bytes(ix.data)
        if program in (MEMO_V1, MEMO_V2):
            memos.append(data.decode(errors="replace"))
        elif program == TOKEN_PROGRAM_ID and data[:1] == bytes([_TRANSFER]) and len(accounts) >= 3:
            amount = int.from_bytes(data[1:9], "little")
            transfers.append(
                TokenTransfer(str(accounts[0]), str(accounts[1]), str(accounts[2]), amount)
            )
        elif (
            program == TOKEN_PROGRAM_ID
            and data[:1] == bytes([_TRANSFER_CHECKED])
            and len(accounts) >= 4
        ):
            amount = int.from_bytes(data[1:9], "little")
            transfers.append(
                TokenTransfer(str(accounts[0]), str(accounts[2]), str(accounts[3]), amount)
            )
    return ChainTransaction(signature, ok, signers, tuple(memos), tuple(transfers))


def token_amount(account_data: bytes) -> int:
    """The amount field of an SPL token account (bytes 64..72, little endian)."""
    return int.from_bytes(account_data[64:72], "little")
