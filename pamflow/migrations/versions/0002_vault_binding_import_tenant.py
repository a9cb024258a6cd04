"""vault binding, import candidates, webhook source tenant

Adds ``credential.candidate_secret`` (an imported secret waiting for a verify) and
``webhook_source.tenant``, and re-encrypts every stored ciphertext from the old
purpose-only associated data (``b"credential"``, ``b"webhook"``) to associated data bound
to its row: credential id, device id and field; webhook source name and field.

The re-encryption needs the master key (``PAMFLOW_MASTER_KEY`` or the key file). A
ciphertext that cannot be decrypted fails the migration with an error naming its table,
column and row id, and nothing is written (the migration runs in one transaction).
The associated-data formats are spelled out here, frozen as of this revision.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

OLD_CREDENTIAL = b"credential"
OLD_WEBHOOK = b"webhook"


def _credential_aad(credential_id, device_id, field):
    return f"pamflow:credential:{credential_id}:{device_id}:{field}".encode()


def _webhook_aad(name, field):
    return f"pamflow:webhook:{name}:{field}".encode()


def _sealed(conn):
    """(table, column, row id, ciphertext, bound aad, purpose aad) of every ciphertext."""
    out = []
    for rid, device_id, secret, pending in conn.execute(sa.text(
            "SELECT id, device_id, secret, pending_secret FROM credential ORDER BY id")):
        if secret is not None:
            out.append(("credential", "secret", rid, secret,
                        _credential_aad(rid, device_id, "secret"), OLD_CREDENTIAL))
        if pending is not None:
            out.append(("credential", "pending_secret", rid, pending,
                        _credential_aad(rid, device_id, "pending"), OLD_CREDENTIAL))
    for rid, cred_id, device_id, secret in conn.execute(sa.text(
            "SELECT h.id, h.credential_id, c.device_id, h.secret FROM credential_history h "
            "JOIN credential c ON c.id = h.credential_id ORDER BY h.id")):
        out.append(("credential_history", "secret", rid, secret,
                    _credential_aad(cred_id, device_id, "history"), OLD_CREDENTIAL))
    for rid, name, secret, previous in conn.execute(sa.text(
            "SELECT id, name, secret, previous_secret FROM webhook_source ORDER BY id")):
        out.append(("webhook_source", "secret", rid, secret, _webhook_aad(name, "secret"),
                    OLD_WEBHOOK))
        if previous is not None:
            out.append(("webhook_source", "previous_secret", rid, previous,
                        _webhook_aad(name, "previous"), OLD_WEBHOOK))
    return out


def _resealed(conn, to_bound):
    """Every ciphertext decrypted and sealed again, as ``{(table, column): [params]}``.

    Computed before anything is written (SQLite runs DDL outside the transaction), so an
    undecryptable row stops the migration with nothing changed."""
    from pamflow.vault import Keyring, NoMasterKey, Vault, VaultError

    rows = _sealed(conn)
    if not rows:
        return {}
    try:
        box = Vault(Keyring.load())
    except NoMasterKey as exc:
        raise VaultError(f"migration 0002 re-encrypts the store's {len(rows)} ciphertext(s) and "
                         f"needs the master key they were sealed with: {exc}") from None
    updates = {}
    for table, column, rid, token, bound, purpose in rows:
        old, new = (purpose, bound) if to_bound else (bound, purpose)
        try:
            fresh = box.encrypt(box.decrypt(token, old), new)
        except VaultError as exc:
            raise VaultError(f"migration 0002: cannot decrypt {table}.{column} of row id {rid} "
                             f"({exc}); nothing was changed") from None
        updates.setdefault((table, column), []).append({"rid": rid, "value": fresh})
    return updates


def _write(conn, updates):
    for (table, column), params in updates.items():
        conn.execute(sa.text(f"UPDATE {table} SET {column} = :value WHERE id = :rid"), params)


def upgrade() -> None:
    conn = op.get_bind()
    updates = _resealed(conn, to_bound=True)
    with op.batch_alter_table('credential', schema=None) as batch_op:
        batch_op.add_column(sa.Column('candidate_secret', sa.Text(), nullable=True))
    with op.batch_alter_table('webhook_source', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant', sa.String(length=255), nullable=False,
                                      server_default='default'))
    _write(conn, updates)


def downgrade() -> None:
    conn = op.get_bind()
    updates = _resealed(conn, to_bound=False)
    conn.execute(sa.text("UPDATE credential SET candidate_secret = NULL"))
    conn.execute(sa.text("DELETE FROM system_parameter WHERE key = 'vault.canary'"))
    _write(conn, updates)
    # plain DROP COLUMN (SQLite >= 3.35): a batch copy of credential would trip its foreign keys
    op.drop_column('webhook_source', 'tenant')
    op.drop_column('credential', 'candidate_secret')
