"""referentials: FINESS establishments and their search terms

Revision ID: 0003_referentials
Revises: 0002_captcha
Create Date: 2026-11-22 01:05:03.041302
"""
import sqlalchemy as sa
from alembic import op

import portal.db

revision = '0003_referentials'
down_revision = '0002_captcha'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('establishments',
    sa.Column('finess', sa.String(length=9), nullable=False),
    sa.Column('finess_juridique', sa.String(length=9), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('long_name', sa.String(length=255), nullable=True),
    sa.Column('name_complement', sa.String(length=255), nullable=True),
    sa.Column('distribution_complement', sa.String(length=255), nullable=True),
    sa.Column('street_number', sa.String(length=16), nullable=True),
    sa.Column('street_type', sa.String(length=16), nullable=True),
    sa.Column('street', sa.String(length=255), nullable=True),
    sa.Column('street_number_suffix', sa.String(length=16), nullable=True),
    sa.Column('locality', sa.String(length=255), nullable=True),
    sa.Column('routing_line', sa.String(length=255), nullable=True),
    sa.Column('postal_code', sa.String(length=5), nullable=True),
    sa.Column('city', sa.String(length=255), nullable=True),
    sa.Column('commune_code', sa.String(length=3), nullable=True),
    sa.Column('department_code', sa.String(length=3), nullable=False),
    sa.Column('department_name', sa.String(length=64), nullable=True),
    sa.Column('category_code', sa.String(length=8), nullable=True),
    sa.Column('category_label', sa.String(length=255), nullable=True),
    sa.Column('category_group_code', sa.String(length=8), nullable=True),
    sa.Column('category_group_label', sa.String(length=255), nullable=True),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('fax', sa.String(length=32), nullable=True),
    sa.Column('siret', sa.String(length=14), nullable=True),
    sa.Column('opened_on', sa.Date(), nullable=True),
    sa.Column('authorized_on', sa.Date(), nullable=True),
    sa.Column('finess_updated_on', sa.Date(), nullable=True),
    sa.Column('closed_at', portal.db.UTCDateTime(), nullable=True),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('fingerprint', sa.String(length=32), nullable=False),
    sa.Column('name_key', sa.String(length=255), nullable=False),
    sa.Column('long_name_key', sa.String(length=255), nullable=False),
    sa.Column('search_text', sa.Text(), nullable=False),
    sa.Column('created_at', portal.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', portal.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('finess', name=op.f('pk_establishments'))
    )
    with op.batch_alter_table('establishments', schema=None) as batch_op:
        batch_op.create_index('ix_establishments_department_code', ['department_code'], unique=False)
        batch_op.create_index('ix_establishments_long_name_key', ['long_name_key'], unique=False)
        batch_op.create_index('ix_establishments_name_key', ['name_key'], unique=False)

    op.create_table('establishment_terms',
    sa.Column('term', sa.String(length=64), nullable=False),
    sa.Column('finess', sa.String(length=9), nullable=False),
    sa.ForeignKeyConstraint(['finess'], ['establishments.finess'], name=op.f('fk_establishment_terms_finess_establishments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('term', 'finess', name=op.f('pk_establishment_terms'))
    )
    with op.batch_alter_table('establishment_terms', schema=None) as batch_op:
        batch_op.create_index('ix_establishment_terms_finess_term', ['finess', 'term'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('establishment_terms', schema=None) as batch_op:
        batch_op.drop_index('ix_establishment_terms_finess_term')

    op.drop_table('establishment_terms')
    with op.batch_alter_table('establishments', schema=None) as batch_op:
        batch_op.drop_index('ix_establishments_name_key')
        batch_op.drop_index('ix_establishments_long_name_key')
        batch_op.drop_index('ix_establishments_department_code')

    op.drop_table('establishments')
