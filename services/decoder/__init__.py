"""pktscope decoder: packets to records (fast path), packets to display fields (dissector).

Library modules, one per layer: link (Ethernet/VLAN/PPPoE/MPLS, Linux SLL/SLL2, BSD null/loop,
raw IP, Cisco HDLC), arp, ipv4, ipv6, tcp, udp, icmp. ``fastpath.decode_batch`` is the hot loop
of the decoder service (service.py); ``dissect.dissect`` serves ``pktscope read``.
"""
