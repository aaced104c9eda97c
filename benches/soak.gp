# The soak's samples (benches/soak.sh writes samples.tsv): resident memory and open
# descriptors of the server, and the database's size, minute by minute.
# gnuplot -e "table='…'; output='…'" benches/soak.gp
set terminal pngcairo size 900,560 font "sans,11"
set output output
set title "Soak: churn beside a steady meeting, one release Switchboard"
set xlabel "minute"
set ylabel "resident memory (MiB), descriptors"
set y2label "database (MiB)"
set y2tics
set ytics nomirror
set key bottom right
set grid
set datafile separator "\t"
plot table using 1:($2 / 1024) skip 1 with linespoints lw 2 pt 7 title "resident memory (MiB)", \
     table using 1:3 skip 1 with linespoints lw 2 pt 5 title "open descriptors", \
     table using 1:($5 / 1024) skip 1 axes x1y2 with lines lw 2 dt 2 title "database (MiB, right)"
