module github.com/castellan-mesh/castellan

go 1.26.8
