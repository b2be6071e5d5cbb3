package socketlb

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel,bpfeb -type frontend -type frontend6 -type group -type slot -type backend -type backend6 bpf bpf/connect.c
