# Types for the decoder fast path's compiled twin (services/decoder/fastpath.py; Cython reads this
# .pxd beside the copy it compiles). Header fields and offsets become C integers; ports, sequence
# numbers, timestamps and wire lengths stay Python objects: they go into the record as they are.
import cython

@cython.locals(count=Py_ssize_t, malformed=Py_ssize_t, non_ip=Py_ssize_t, app_errors=Py_ssize_t,
               etype=Py_ssize_t, off=Py_ssize_t, n=Py_ssize_t, vhl=Py_ssize_t, total=Py_ssize_t,
               fragw=Py_ssize_t, ihl=Py_ssize_t, l4=Py_ssize_t, l4len=Py_ssize_t, frag=Py_ssize_t,
               ver=Py_ssize_t, plen=Py_ssize_t, size=Py_ssize_t, offx2=Py_ssize_t, flags=Py_ssize_t,
               hlen=Py_ssize_t, paylen=Py_ssize_t, depth=Py_ssize_t,
               proto=Py_ssize_t)
cpdef decode_batch(packets, app=*, depth=*, expire=*)
