"""A speed twin of a llama GGUF: N layers, layer i a copy of the source's layer i % (its layer count).

    python bench/layer_twin.py SRC.gguf OUT.gguf N

Same tensor shapes and block types, same head and metadata, so the same work per token: how the
default model (98 MB) was timed on a machine only ~60 MB of files could be carried to (its first 4
layers carried, 30 made there; see bench/RESULTS.md). The text it generates means nothing.
"""

from __future__ import annotations

import sys

import gguf
import numpy as np
from gguf.constants import GGUFValueType


def main() -> None:
    if len(sys.argv) != 4 or not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
        raise SystemExit("usage: python bench/layer_twin.py SRC.gguf OUT.gguf N (N >= 1 layers)")
    src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reader = gguf.GGUFReader(src)
    old = int(reader.fields["llama.block_count"].contents())
    writer = gguf.GGUFWriter(dst, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        value = n if key == "llama.block_count" else field.contents()
        if kind == GGUFValueType.ARRAY and not value:
            continue  # the writer refuses empty arrays
        writer.add_key_value(key, value, kind, sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
    tensors = {t.name: t for t in reader.tensors}
    parts = sorted({t.name.split(".", 2)[2] for t in reader.tensors if t.name.startswith("blk.0.")})
    plan = [(name, name) for name in tensors if not name.startswith("blk.")]
    plan += [(f"blk.{i}.{part}", f"blk.{i % old}.{part}") for i in range(n) for part in parts]
    for name, source in plan:
        writer.add_tensor(name, np.asarray(tensors[source].data), raw_dtype=tensors[source].tensor_type)  # stored bytes as they are
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{dst}: {n} layers from {src}'s {old}")


if __name__ == "__main__":
    main()
