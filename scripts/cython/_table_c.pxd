# Types for the flow table's compiled twin (services/flowtracker/table.py; Cython reads this .pxd
# beside the copy it compiles). The per-flow slot numbers become C integers: ``st[LAST]`` is then
# a direct list access instead of a module-global lookup plus a boxed index on every use.
cdef Py_ssize_t FID, KEY, PROTO, IPV, SRC, SPORT, DST, DPORT, INIT_FIRST, OUTBOUND, FIRST, LAST
cdef Py_ssize_t POUT, BOUT, PIN, BIN, POUT0, BOUT0, PIN0, BIN0, STATE, FINS, IDLE, LRU, NEXT_UPD
cdef Py_ssize_t UPD_K, DIRTY, NAME, NAME_SRC, NAME_RANK, DNS_NAME, APP, ALIVE, SYN_TS, IRTT, SEQ
cdef Py_ssize_t R_NAME, R_NAME_SRC

cimport cython

# The per-record loop (FlowTable.add): a flow's state is a list (items read without a type test),
# the flow map a dict (get without a method call), the times compared as C doubles (t, last, idle,
# upd): the same answers as Python's objects for any timestamp below 2**53 (a packet's is a float).
@cython.locals(n=Py_ssize_t, st=list, flows=dict, key=tuple, fwd=bint, out=bint, t=double, last=double,
               idle=double, upd=double, prev=list, prev_fwd=bint,
               prev_at_end=bint, at_end=bint)
cdef Py_ssize_t _add_records(self, records) except -1

@cython.locals(sq=list, d=Py_ssize_t, holes=list, i=Py_ssize_t)
cpdef _seqs(list st, bint out, seq, pl)
