# Types for capture's sharder twin (services/capture/sharding.py; Cython reads this .pxd beside
# the copy it compiles). The mix is unsigned 64-bit C arithmetic (wrapping where the pure module
# masks), and the common Ethernet/IPv4 case reads the frame through a C pointer.
import cython

ctypedef unsigned long long u64

# the mix's constants and the tunnel ports as C values (as Python globals they made each mix
# bigint arithmetic: 400 ns a packet)
cdef u64 _M64, _K1, _K2, _K3
cdef Py_ssize_t _VXLAN_A, _VXLAN_B, _GENEVE

@cython.locals(h=u64)
cdef u64 _mix(u64 a, u64 b, u64 x, u64 y)

@cython.locals(n=Py_ssize_t, p="const unsigned char *", proto=cython.int, y=u64, a=u64, b=u64, x=u64, o=Py_ssize_t, et=cython.int, _hop=cython.int)
cpdef Py_ssize_t ethernet_shard(d, Py_ssize_t decoders) except -1

@cython.locals(decoders=Py_ssize_t, direct=cython.bint, i=Py_ssize_t)
cpdef tuple deal(packets, shard, list batches, Py_ssize_t bsize, linktype, num, until)

@cython.locals(v=u64, i=Py_ssize_t)
cdef u64 _u64(const unsigned char *p, Py_ssize_t o)
