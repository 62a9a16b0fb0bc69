"""The recipe's option schemas that are not steps: pure pydantic, no file read, nothing heavy imported.

`edgepress.recipe` is built from these (and the steps' own configs); the code that acts on them imports them
from here: `baseline` (gates.baseline, `edgepress compare`), `quantize` (exports[].quantize, `edgepress quantize`),
`tune` (the tune: section).
"""
