package tcnat

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel,bpfeb -type frontend -type service -type slot -type backend -type tuple -type ct -type pod_cidr -type pod_link -type direct_cfg -type pod_iface bpf bpf/nat.c
