# Server CPU (cores) against egress packets per second, one line per server, from the table
# benches/sweep.sh writes. gnuplot -e "table='…'; output='…'" benches/cpu-vs-packets.gp
set terminal pngcairo size 900,560 font "sans,11"
set output output
set title "Server CPU against forwarded packets (meeting rooms of 4, 800 kbit/s video + audio)"
set xlabel "egress RTP packets per second"
set ylabel "server CPU (cores)"
set key top left
set grid
set datafile separator "\t"
plot table using (strcol(1) eq "switchboard" ? $3 : 1/0):4 with linespoints lw 2 pt 7 title "Switchboard", \
     table using (strcol(1) eq "janus" ? $3 : 1/0):4 with linespoints lw 2 pt 5 title "Janus 1.1.2 VideoRoom"
