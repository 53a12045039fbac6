"""Arrow schemas of the files stages hand to each other. One place, so every stage agrees.

A chunk table (`nextlong chunk` output, input of `nextlong index` and `nextlong synthesize`) has one
row per meta-chunk, in corpus order. `chunk_id` is the row number and the key used in the ANN index.
"""

from __future__ import annotations

import pyarrow as pa

CHUNK_SCHEMA = pa.schema(
    [
        pa.field("chunk_id", pa.int64(), nullable=False),  # row number, global over the corpus
        pa.field("doc_index", pa.int64(), nullable=False),  # ordinal of the document in the corpus stream
        pa.field("doc_id", pa.string(), nullable=False),  # the id field, else "<file>:<line or record>"
        pa.field("chunk_index", pa.int32(), nullable=False),  # position of the chunk in its document
        pa.field("char_start", pa.int64(), nullable=False),  # span in the document, in code points,
        pa.field("char_end", pa.int64(), nullable=False),  #   end exclusive
        pa.field("num_tokens", pa.int32()),  # null when chunked without a tokenizer
        pa.field("text_hash", pa.uint64(), nullable=False),  # 64-bit hash of the UTF-8 text (exact-duplicate test)
        pa.field("text", pa.string(), nullable=False),
    ]
)

# Optional column, present when chunks were tokenized: the chunk's token ids (tokenized on its own).
CHUNK_INPUT_IDS_FIELD = pa.field("input_ids", pa.list_(pa.uint32()))

TOKENS_SCHEMA = pa.schema(
    [
        pa.field("doc_index", pa.int64(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.uint32()), nullable=False),
    ]
)
