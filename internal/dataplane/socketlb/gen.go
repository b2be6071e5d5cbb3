package socketlb

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel,bpfeb -type frontend -type group -type slot -type backend bpf bpf/connect.c
